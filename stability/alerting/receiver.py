"""A webhook receiver on loopback that prints each page it gets as one line.

`stability demo` starts one and points its runs' notifier at it, so a page is seen arriving in the terminal the
way an on-call tool would get it: over real HTTP, through the notifier's background sender. It understands the
shapes our notifier sends (the generic JSON payload, Slack, Alertmanager v4, PagerDuty Events v2) well enough to
summarise each in one line, and never prints a PagerDuty routing key.

    with WebhookReceiver() as rx:                 # 127.0.0.1, a free port
        AlertingConfig(run="r", webhook_url=rx.url)
        ...
        rx.pages                                  # [Page(time, path, body, line), ...]
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20
"""Larger bodies are refused (413): a page is a few KB."""


@dataclass(frozen=True)
class Page:
    time: float
    """Unix seconds when it arrived."""
    path: str
    body: object
    """The decoded JSON body."""
    line: str
    """What was printed."""


def page_line(body) -> str:
    """One line for a page of any shape the notifier sends."""
    if not isinstance(body, dict):
        return _clip(json.dumps(body))
    if "schema" in body and "run" in body:  # the generic payload, stability.alert/v1
        where = f"run {body.get('run')}" + ("" if body.get("step") is None else f" step {body['step']}")
        signal = body.get("signal") or ""
        if signal and isinstance(body.get("score"), (int, float)):
            signal += f" {body['score']:.3g}"
        parts = [f"[{body.get('severity', '?')}] {body.get('title', body.get('kind', '?'))}: {where}", signal,
                 body.get("message") or ""]
        return _clip(" | ".join(p for p in parts if p))
    if "alerts" in body and "groupKey" in body:  # Alertmanager webhook v4
        alerts = [f"{a.get('labels', {}).get('alertname', '?')} {a.get('status', '?')}: "
                  f"{a.get('annotations', {}).get('summary', '')}" for a in body.get("alerts", [])]
        return _clip(f"[alertmanager {body.get('status', '?')}] " + "; ".join(alerts))
    if "event_action" in body:  # PagerDuty Events v2; the routing key is a secret and stays out
        summary = (body.get("payload") or {}).get("summary", "")
        return _clip(f"[pagerduty {body['event_action']}] {summary or body.get('dedup_key', '')}")
    if "text" in body:  # Slack incoming webhook
        return _clip(str(body["text"]))
    return _clip(json.dumps(body, sort_keys=True))


def _clip(s: str, n: int = 240) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"


class WebhookReceiver:
    """An HTTP server on `host`:`port` (0 = a free port) in a background thread; POSTs are pages."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", out=None, prefix: str = "page", keep: int = 1000):
        self.out = out if out is not None else sys.stdout
        self.prefix = prefix
        self._pages: deque[Page] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/hook"

    @property
    def pages(self) -> list[Page]:
        with self._lock:
            return list(self._pages)

    def start(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _received(self, path: str, body) -> None:
        page = Page(time.time(), path, body, page_line(body))
        with self._lock:
            self._pages.append(page)
            # One write per line: print() writes the text and the newline separately, and a line printed by another
            # thread between the two (the demo's narration) would run into this one.
            self.out.write(f"{self.prefix}: {page.line}\n")
            self.out.flush()

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n > MAX_BODY:
                    self._answer(413, "body too large")
                    return
                raw = self.rfile.read(n)
                try:
                    body = json.loads(raw)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    self._answer(400, "body is not JSON")
                    return
                receiver._received(self.path, body)
                self._answer(200, "ok")

            def _answer(self, code: int, msg: str):
                data = json.dumps({"ok": code == 200, "message": msg}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # the one line per page is the log
                pass

        return Handler
