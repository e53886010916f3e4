"""`stability dashboard`: arguments and the streamlit command it runs (the real server: test_dashboard_browser)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from dashboard.server import streamlit_argv
from dashboard.store_path import ENV_SAMPLE_RUNS, default_store
from stability.cli import main
from stability.commands import dashboard as cmd
from stability.errors import UsageError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_bind_loopback_and_open_the_sample_runs(monkeypatch):
    monkeypatch.delenv(ENV_SAMPLE_RUNS, raising=False)
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.store) == ("127.0.0.1", cmd.DEFAULT_PORT, None)
    assert cmd.resolve_store(None) == (REPO / "sample_runs").resolve()
    monkeypatch.setenv(ENV_SAMPLE_RUNS, "/somewhere/else")
    assert default_store() == Path("/somewhere/else")


def test_streamlit_runs_headless_without_usage_stats_on_the_given_address(tmp_path):
    argv = streamlit_argv(tmp_path, 8123)
    opts = dict(zip(argv[argv.index("run") + 2::2], argv[argv.index("run") + 3::2]))
    assert argv[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert Path(argv[4]) == REPO / "dashboard" / "app.py"
    assert opts["--server.address"] == "127.0.0.1" and opts["--server.port"] == "8123"
    assert opts["--server.headless"] == "true" and opts["--browser.gatherUsageStats"] == "false"
    assert argv[-3:] == ["--", "--store", str(tmp_path)]


def test_bad_input_is_one_line_and_exit_code_2(capsys):
    assert main(["dashboard", "--store", "/no/such/store"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--store /no/such/store: no such folder" in err and err.count("\n") == 0


@pytest.mark.parametrize("store, port, message", [
    ("FILE", 8501, "not a folder"),
    (None, 70000, "between 1 and 65535"),
])
def test_bad_store_or_port_is_a_usage_error(tmp_path, store, port, message):
    f = tmp_path / "file"
    f.write_text("x")
    args = argparse.Namespace(store=str(f) if store == "FILE" else store, port=port, host="127.0.0.1")
    with pytest.raises(UsageError, match=message):
        cmd.run(args)
