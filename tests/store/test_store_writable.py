"""RunStore.ensure_writable writes for real: a folder that takes no new file is refused even where os.access
says yes (root), the answer is one line naming the folder and the reason, and a store that passed once is not
probed again. The `--store` checks of `train`, `demo` and the store commands all go through it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stability.cli import main
from stability.store import RunStore, StoreError
from stability.store.admin import StoreNotWritable

PROC = Path("/proc")
no_proc = pytest.mark.skipif(not sys.platform.startswith("linux") or not PROC.is_dir(), reason="needs Linux /proc")


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_a_path_under_a_regular_file_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreNotWritable) as e:
        RunStore(blocker / "store").ensure_writable()
    assert isinstance(e.value, StoreError) and e.value.path == blocker / "store"
    assert str(e.value) == f"cannot create store folder {blocker / 'store'}: Not a directory"
    with pytest.raises(StoreNotWritable, match="a file is in the way"):
        RunStore(blocker).ensure_writable()
    assert blocker.read_text() == "not a folder"


@no_proc
def test_a_folder_that_takes_no_file_is_refused_even_when_os_access_says_yes():
    # The root of /proc takes no new file, not even from root, whom os.access answers yes for every folder.
    with pytest.raises(StoreNotWritable) as e:
        RunStore(PROC).ensure_writable()
    assert str(e.value).startswith(f"store folder {PROC} is not writable: ") and e.value.reason
    assert "\n" not in str(e.value)


@pytest.mark.may_skip  # root writes through the mode bits, in CI too
def test_a_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        try:  # root writes through the mode bits: nothing to refuse then
            (ro / "x").touch()
            (ro / "x").unlink()
            pytest.skip("this user can write into a folder without write permission (root)")
        except PermissionError:
            pass
        with pytest.raises(StoreNotWritable, match="not writable: Permission denied"):
            RunStore(ro).ensure_writable()
    finally:
        ro.chmod(0o755)


def test_the_probe_leaves_nothing_and_runs_once_per_store(tmp_path):
    root = tmp_path / "new" / "store"
    store = RunStore(root)
    store.ensure_writable()  # creates the folder, probes it
    assert root.is_dir() and list(root.iterdir()) == []
    past = 1_000_000_000_000_000_000  # ns: creating and removing a file would move the folder's mtime to now
    os.utime(root, ns=(past, past))
    store.ensure_writable()
    store.create_run("r", git="").close()
    assert os.stat(root).st_mtime_ns != past  # (the run's folder did move it)
    os.utime(root, ns=(past, past))
    for _ in range(3):
        store.ensure_writable()
    assert os.stat(root).st_mtime_ns == past, "a store that passed once was probed again"
    RunStore(root).ensure_writable()  # a new store object probes
    assert os.stat(root).st_mtime_ns != past
    assert sorted(p.name for p in root.iterdir()) == ["r"]


def test_a_removed_store_folder_is_created_again(tmp_path):
    store = RunStore(tmp_path / "s")
    store.ensure_writable()
    (tmp_path / "s").rmdir()
    store.create_run("r", git="").close()
    assert store.has_run("r")


def test_read_only_store_objects_are_still_refused_first(tmp_path):
    with pytest.raises(StoreError, match="opened read-only"):
        RunStore(tmp_path, read_only=True).ensure_writable()


def test_store_commands_refuse_an_unwritable_store_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    csv = tmp_path / "ok.csv"
    csv.write_text("step,metric,layer,value\n1,loss,,1\n")
    rc, err = _cli(capsys, "import", csv, "--store", blocker / "s", "--run", "x")
    assert rc == 2 and len(err) == 1 and f"cannot create store folder {blocker / 's'}" in err[0], err
    rc, err = _cli(capsys, "demo", "--store", blocker / "s", "--no-dashboard", "--steps", "60")
    assert rc == 2 and err == [f"stability demo: error: --store {blocker / 's'}: not writable (Not a directory)"]
    if PROC.is_dir() and sys.platform.startswith("linux"):
        rc, err = _cli(capsys, "import", csv, "--store", PROC, "--run", "x")
        assert rc == 2 and len(err) == 1 and f"store folder {PROC} is not writable" in err[0], err


@no_proc
def test_train_refuses_a_folder_that_takes_no_file_before_training(tmp_path):
    r = subprocess.run([sys.executable, "-m", "stability", "train", "--steps", "1", "--store", str(PROC)],
                       check=False, capture_output=True, text=True, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"stability train: error: --store {PROC}: not writable ("), lines

