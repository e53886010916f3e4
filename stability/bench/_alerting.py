"""`stability alert bench`: what alerting costs the training loop, against real endpoints on 127.0.0.1.

Measures observe() and notify() while the webhook hangs (accepts, never answers), close() time with that
endpoint, and how many notifications a storm of alerts becomes.
"""

from __future__ import annotations

import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from stability.alerting.config import AlertingConfig
from stability.alerting.notifier import Notifier


class _Endpoint:
    """A local webhook that answers 200, or hangs until closed."""

    def __init__(self, hang: bool):
        self.count = 0
        release = self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.count += 1
                if hang:
                    release.wait(30)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _us(xs):
    xs = sorted(xs)
    return {"median_us": round(statistics.median(xs) * 1e6, 1), "p99_us": round(xs[int(0.99 * (len(xs) - 1))] * 1e6, 1),
            "max_us": round(xs[-1] * 1e6, 1)}


def hanging_endpoint(steps: int = 2000) -> dict:
    ep = _Endpoint(hang=True)
    cfg = AlertingConfig(run="bench", webhook_url=ep.url, metrics_port=0, cooldown_s=1e-9, max_pages=10**9,
                         queue_size=64, timeout_s=2.0, deadline_s=3.0, close_timeout_s=0.5)
    n = Notifier(cfg)
    observe_s, notify_s = [], []
    record = {("loss", ""): 2.0, ("grad_norm", "total"): 1.0, ("grad_norm", "embedding"): 0.1,
              ("loss_scale", ""): 65536.0, ("lr", ""): 1e-3}
    try:
        for i in range(steps):
            record[("loss", "")] = 2.0 + 1e-4 * (i % 7)
            t0 = time.perf_counter()
            n.observe(i, record)
            t1 = time.perf_counter()
            n.notify("alert", i, "warning", "emb_grad_z", 1.2, "bench")       # every call reaches the queue
            t2 = time.perf_counter()
            observe_s.append(t1 - t0)
            notify_s.append(t2 - t1)
        t0 = time.monotonic()
        n.close()
        close_s = time.monotonic() - t0
    finally:
        n.close()
        ep.close()
    return {"steps": steps, "observe": _us(observe_s), "notify": _us(notify_s), "close_s": round(close_s, 3),
            "close_timeout_s": cfg.close_timeout_s, "dropped": n.stats.get("dropped", 0)}


def storm(alerts: int = 1000, seconds: float = 1.0, cooldown_s: float = 0.25) -> dict:
    ep = _Endpoint(hang=False)
    n = Notifier(AlertingConfig(run="bench", webhook_url=ep.url, cooldown_s=cooldown_s, max_pages=10**9))
    try:
        t0 = time.monotonic()
        for i in range(alerts):
            n.notify("alert", i, "warning", "emb_grad_z", 1.5, "storm")
            time.sleep(seconds / alerts)
        elapsed = time.monotonic() - t0
        n.flush(10.0)
    finally:
        n.close()
        ep.close()
    return {"alerts": alerts, "seconds": round(elapsed, 3), "cooldown_s": cooldown_s, "pages": n.stats["page"],
            "reminders": n.stats["reminder"], "suppressed": n.stats["suppressed"], "delivered": ep.count}


def run(steps: int = 2000, alerts: int = 1000) -> dict:
    return {"hanging_endpoint": hanging_endpoint(steps), "storm": storm(alerts)}
