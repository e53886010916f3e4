"""Secrets kept out of logs, output and exceptions; configuration sources; `stability alert test` and
`stability alert bench`; the flags `stability train` uses."""

import json
import logging

import pytest

from stability.alerting import AlertingConfig, Notifier, NullNotifier, load_config
from stability.cli import main as cli_main
from tests.alerting.test_alerting_webhook import fast, recording_servers, validate


@pytest.fixture
def server():
    yield from recording_servers()


# --- secrets ---------------------------------------------------------------------------------------------------

SECRET_PATH = "T0SECRET/B0SECRET/xoxSECRETpath"
TOKEN = "tok-SECRET-4242"


def _assert_clean(*texts):
    for text in texts:
        for secret in (SECRET_PATH, TOKEN, "SECRET"):
            assert secret not in text, text


def test_secrets_never_appear_in_logs_output_or_exceptions(server, caplog, capsys, monkeypatch):
    caplog.set_level(logging.DEBUG)
    failing = server(default=500)
    url = failing.url("/services/" + SECRET_PATH)
    dead = "http://127.0.0.1:9/services/" + SECRET_PATH          # nothing listens on port 9
    texts = []

    cfg = fast(webhook_url=url, webhook_token=TOKEN, slack_webhook_url=dead, deadline_s=0.5, close_timeout_s=1.0)
    texts += [repr(cfg), str(cfg), cfg.describe(), str(cfg.public_dict())]
    n = Notifier(cfg)
    for i, kind in enumerate(["alert", "spike", "divergence", "overflow_burst"]):
        n.notify(kind, i, message="boom")
    assert n.flush(10.0)
    n.close()
    assert n.stats["failed"] == 8 and n.stats["delivered"] == 0
    # The token did go where it belongs.
    assert failing.requests[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    # Each failing target is reported once, not once per notification.
    failures = [r.getMessage() for r in caplog.records if "failed:" in r.getMessage()]
    assert len(failures) == 2

    for bad in (dict(webhook_url="ftp://hooks.example.com/" + SECRET_PATH),
                dict(webhook_url="https://hooks.example.com/" + SECRET_PATH, webhook_format="xml"),
                dict(webhook_url="https://hooks.example.com/" + SECRET_PATH, webhook_token=TOKEN, nope=1)):
        with pytest.raises((ValueError, TypeError)) as ei:
            load_config(env={}, **bad)
        texts += [str(ei.value), repr(ei.value)]

    monkeypatch.setenv("STABILITY_WEBHOOK_URL", url)
    monkeypatch.setenv("STABILITY_WEBHOOK_TOKEN", TOKEN)
    assert cli_main(["alert", "test", "--timeout", "0.5"]) == 1
    assert cli_main(["alert", "test", "--webhook", dead, "--timeout", "0.3"]) == 1
    out = capsys.readouterr()
    texts += [out.out, out.err, caplog.text]
    assert "HTTP 500" in out.out and "NOT delivered" in out.out
    _assert_clean(*texts)


def test_redactor_masks_url_pieces_an_error_might_quote():
    from stability.alerting.redact import Redactor, redact_url

    url = "https://hooks.example.com:8443/services/" + SECRET_PATH + "?token=" + TOKEN
    assert redact_url(url) == "https://hooks.example.com:8443/…"
    r = Redactor(url, TOKEN)
    _assert_clean(r(f"POST {url} failed"), r(f"path /services/{SECRET_PATH} not found"), r(f"bad token {TOKEN}"))
    assert "https://hooks.example.com:8443/…" in r(f"POST {url} failed")


# --- configuration and the command ------------------------------------------------------------------------------

def test_config_precedence_file_then_env_then_flags(tmp_path):
    f = tmp_path / "alerting.toml"
    f.write_text('[alerting]\nwebhook_url = "https://file.example/h"\ncooldown_s = 5.0\nmetrics_port = 9108\n')
    cfg = load_config(f, env={})
    assert (cfg.webhook_url, cfg.cooldown_s, cfg.metrics_port) == ("https://file.example/h", 5.0, 9108)
    cfg = load_config(f, env={"STABILITY_WEBHOOK_URL": "https://env.example/h", "STABILITY_WEBHOOK_TOKEN": "t"})
    assert (cfg.webhook_url, cfg.webhook_token, cfg.cooldown_s) == ("https://env.example/h", "t", 5.0)
    cfg = load_config(f, env={"STABILITY_WEBHOOK_URL": "https://env.example/h"}, webhook_url="https://flag/h")
    assert cfg.webhook_url == "https://flag/h"
    cfg = load_config(env={"STABILITY_ALERT_CONFIG": str(f)})
    assert cfg.cooldown_s == 5.0

    (tmp_path / "bad.toml").write_text("[alerting]\ncooldown = 5\n")
    with pytest.raises(ValueError, match="unknown key.*cooldown"):
        load_config(tmp_path / "bad.toml", env={})
    with pytest.raises(ValueError, match="not found"):
        load_config(tmp_path / "missing.toml", env={})
    with pytest.raises(ValueError, match="cooldown_s"):
        AlertingConfig(cooldown_s=-1)


def test_alert_test_command_reports_the_http_result(server, capsys):
    ok = server()
    assert cli_main(["alert", "test", "--webhook", ok.url("/ok"), "--run", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "HTTP 200" in out and "delivered" in out and "127.0.0.1" in out and "/ok" not in out
    (body,) = ok.payloads()
    validate(body)
    assert (body["kind"], body["notification"], body["run"]) == ("test", "test", "smoke")

    slack = server()
    assert cli_main(["alert", "test", "--webhook", slack.url(), "--webhook-format", "slack"]) == 0
    assert "Test alert" in slack.payloads()[0]["text"]

    assert cli_main(["alert", "test", "--webhook", "ftp://x/y"]) == 2
    assert "http(s)" in capsys.readouterr().err


def test_the_documented_example_payload_matches_the_schema():
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "alerting.md").read_text()
    example = re.search(r"```json\n(.*?)```", doc, re.S).group(1)
    validate(json.loads(example))


def test_train_flags_build_a_notifier_and_a_busy_port_is_a_usage_error(server, capsys):
    import argparse

    from stability.alerting import cli_args
    from stability.errors import UsageError

    srv = server()
    p = argparse.ArgumentParser()
    cli_args.add_arguments(p)
    args = p.parse_args(["--webhook", srv.url("/services/" + SECRET_PATH), "--metrics-port", "0"])
    n = cli_args.notifier_from_args(args, run="r9")
    try:
        assert isinstance(n, Notifier) and n.config.run == "r9" and n.metrics_url.startswith("http://127.0.0.1:")
        err = capsys.readouterr().err
        assert n.metrics_url in err and "127.0.0.1" in err
        _assert_clean(err)
        busy = p.parse_args(["--metrics-port", str(n.exporter.port)])
        with pytest.raises(UsageError, match="--metrics-port"):
            cli_args.notifier_from_args(busy, run="r9")
    finally:
        n.close()
    assert isinstance(cli_args.notifier_from_args(p.parse_args([]), run="r9"), NullNotifier)


def test_alert_bench_prints_json_figures(capsys):
    assert cli_main(["alert", "bench", "--steps", "100", "--alerts", "100"]) == 0
    out = json.loads(capsys.readouterr().out)
    hang, storm = out["hanging_endpoint"], out["storm"]
    assert hang["steps"] == 100 and hang["notify"]["median_us"] > 0 and hang["dropped"] > 0
    assert storm["pages"] == 1 and storm["pages"] + storm["reminders"] + storm["suppressed"] == 100
    assert storm["delivered"] == storm["pages"] + storm["reminders"]
