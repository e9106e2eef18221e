"""argen/io/folders.py: the output-folder lock, the incomplete marker and atomic writes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from argen.cli.common import ConfigError
from argen.io.folders import (LOCK_NAME, MARKER_NAME, FolderBusyError, FolderLock, atomic_write, check_complete,
                               marker_for, read_marker, remove_temp_files, write_marker)
from tests.conftest import REPO, cli_env

HOLD = ("import sys, time; from argen.io.folders import FolderLock; FolderLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(600)")


def test_a_lock_held_by_another_process_names_it_and_dies_with_it(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO, env=cli_env(),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusyError, match=rf"pid {proc.pid} on host {socket.gethostname()}, since "):
            FolderLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    holder = json.loads((tmp_path / LOCK_NAME).read_text())
    assert holder["pid"] == proc.pid  # a killed holder's record stays behind ...
    with FolderLock(tmp_path):  # ... but does not block: the kernel dropped the lock
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] != proc.pid
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released: names nobody


def test_a_second_lock_in_the_same_process_is_refused_until_released(tmp_path: Path) -> None:
    first = FolderLock(tmp_path / "new" / "folder")  # creates the folder
    first.acquire()
    with pytest.raises(FolderBusyError, match="another output_dir"):
        FolderLock(tmp_path / "new" / "folder").acquire()
    first.release()
    FolderLock(tmp_path / "new" / "folder").acquire()


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "a.png"
    atomic_write(target, lambda f: f.write(b"old"))

    def fail(f: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    (tmp_path / ".b.png.123.tmp").write_bytes(b"half")  # what a SIGKILL mid-write leaves
    assert remove_temp_files(tmp_path) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_incomplete_marker_guards_the_folder_and_what_is_inside(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    (run / "images" / "000000.png").write_bytes(b"")
    assert marker_for(run) is None and check_complete(run / "samples.npz", False) is None
    write_marker(run, {"seed": 0}, total_images=4)
    assert read_marker(run)["settings"] == {"seed": 0} and read_marker(run)["complete"] is False
    for samples in (run, run / "images", run / "samples.npz", run / "geneval"):
        assert marker_for(samples) == run / MARKER_NAME
        with pytest.raises(ConfigError, match=r"(?s)1 of 4 images.*resume=true.*allow_incomplete=true"):
            check_complete(samples, False)
    assert "allow_incomplete=true" in (check_complete(run / "images", True) or "")
    (run / MARKER_NAME).write_text("{not json")
    assert read_marker(run) == {"complete": False}  # unreadable still means unfinished
