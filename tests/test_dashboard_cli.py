"""`stability dashboard`: arguments and the streamlit command it runs (the real server: test_dashboard_browser)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dashboard.store_path import ENV_SAMPLE_RUNS, default_store
from stability.cli import build_parser, main
from stability.commands import dashboard as cmd

REPO = Path(__file__).resolve().parents[1]


def test_defaults_bind_loopback_and_open_the_sample_runs(monkeypatch):
    monkeypatch.delenv(ENV_SAMPLE_RUNS, raising=False)
    args = build_parser().parse_args(["dashboard"])
    assert (args.host, args.port, args.store) == ("127.0.0.1", cmd.DEFAULT_PORT, None)
    assert cmd.resolve_store(None) == (REPO / "sample_runs").resolve()
    monkeypatch.setenv(ENV_SAMPLE_RUNS, "/somewhere/else")
    assert default_store() == Path("/somewhere/else")


def test_streamlit_runs_headless_without_usage_stats_on_the_given_address(tmp_path):
    argv = cmd.streamlit_argv(tmp_path, 8123)
    opts = dict(zip(argv[argv.index("run") + 2::2], argv[argv.index("run") + 3::2]))
    assert argv[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert Path(argv[4]) == REPO / "dashboard" / "app.py"
    assert opts["--server.address"] == "127.0.0.1" and opts["--server.port"] == "8123"
    assert opts["--server.headless"] == "true" and opts["--browser.gatherUsageStats"] == "false"
    assert argv[-3:] == ["--", "--store", str(tmp_path)]


@pytest.mark.parametrize("argv, message", [
    (["dashboard", "--store", "/no/such/store"], "no such folder"),
    (["dashboard", "--port", "70000"], "between 1 and 65535"),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0


def test_a_file_is_not_a_store(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["dashboard", "--store", str(f)]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_the_dashboard_never_imports_torch():
    # A fresh interpreter: other tests in this process may have imported torch already.
    code = ("import sys, runpy\n"
            "import dashboard.queries, dashboard.plot, dashboard.run_figure, stability.commands.dashboard\n"
            "from dashboard.views import alerts, compare, run, runs\n"
            "from stability.detector import label_spikes\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
