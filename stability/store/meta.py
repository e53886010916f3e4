"""run.json: a run's metadata, and how a reader tells a run whose writer died from one still running.

run.json is replaced atomically and only under `<run>/.meta.lock`, so several writers of one run (ranks) never
lose each other's updates. Each writer records itself under `writers[token]` with its host, pid, the pid's
start time (to survive pid reuse) and a heartbeat. A run whose status is still "running" reads as "failed"
(with `stale: true`) when one of its open writers is gone: on this host its pid no longer runs, on another
host its heartbeat is older than `STALE_AFTER` seconds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from stability import metrics as M
from stability.store import layout

STALE_AFTER = 300.0
"""Seconds without a heartbeat after which a writer on another host counts as gone."""

HOST = socket.gethostname()


def pid_start_time(pid: int) -> int | None:
    """The process start time in clock ticks since boot (Linux), to tell a reused pid from the original."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data.rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int, start: int | None = None) -> bool:
    if pid <= 0:
        return False  # os.kill(0 or -1, ...) would address a whole process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    if start is not None:
        now = pid_start_time(pid)
        if now is not None and now != start:
            return False  # the pid was reused by another process
    # A zombie (killed, not yet reaped by its parent) is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        if state in (b"Z", b"X"):
            return False
    except (OSError, IndexError):
        pass
    return True


def git_revision(cwd: str | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    return rev if out.returncode == 0 and rev else None


def new_meta(name: str, config: dict | None, token: str, git: str | None) -> dict:
    now = time.time()
    config = dict(config or {})
    return {
        "name": name,
        "status": M.ST_RUNNING,
        "started": now,
        "ended": None,
        "last_step": None,
        "last_write": now,
        "config": config,
        "ln": config.get("ln"),
        "precision": config.get("precision"),
        "host": HOST,
        "pid": os.getpid(),
        "git": git,
        "writers": {token: writer_entry(now)},
    }


def writer_entry(now: float) -> dict:
    pid = os.getpid()
    return {"host": HOST, "pid": pid, "pid_start": pid_start_time(pid), "started": now, "heartbeat": now,
            "closed": False}


def read(run_dir: Path) -> dict:
    return layout.read_json(run_dir / layout.RUN_JSON)


def update(run_dir: Path, fn) -> dict:
    """Read-modify-write run.json under the run's meta lock; `fn(meta)` edits the dict in place."""
    with layout.file_lock(run_dir / layout.META_LOCK):
        try:
            m = read(run_dir)
        except FileNotFoundError:
            m = {}
        fn(m)
        layout.write_json_atomic(run_dir / layout.RUN_JSON, m)
    return m


def writer_alive(w: dict, now: float) -> bool:
    """Is this writer's process still there? (this host: by pid; another host: by a recent heartbeat)."""
    if w.get("host") == HOST:
        return pid_alive(int(w.get("pid", -1)), w.get("pid_start"))
    return now - float(w.get("heartbeat") or 0) <= STALE_AFTER


def effective_status(m: dict, now: float | None = None) -> tuple[str, bool]:
    """(status, stale): a "running" run one of whose open writers is gone reads as ("failed", True)."""
    status = m.get("status") or M.ST_RUNNING
    if status != M.ST_RUNNING:
        return status, False
    now = time.time() if now is None else now
    for w in (m.get("writers") or {}).values():
        if not w.get("closed") and not writer_alive(w, now):
            return M.ST_FAILED, True
    return status, False
