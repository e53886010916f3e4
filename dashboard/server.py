"""Starting the dashboard's Streamlit server as a child process (`stability dashboard`, the demo, the benchmark)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def streamlit_argv(store: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """The `streamlit run` command line: headless, no usage statistics, no file watching, bound to `host`."""
    app = Path(__file__).resolve().parent / "app.py"
    return [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.headless", "true",
        "--server.address", host,
        "--server.port", str(port),
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--theme.base", "light",
        "--", "--store", str(store),
    ]


def launch(store: Path, port: int, host: str = "127.0.0.1", **popen_kw) -> subprocess.Popen:
    """Start the server as a child process (used by `stability dashboard` and by the demo)."""
    env = dict(os.environ, STABILITY_STORE=str(store), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    return subprocess.Popen(streamlit_argv(store, port, host), env=env, **popen_kw)
