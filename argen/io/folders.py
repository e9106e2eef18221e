"""argen-sample's output folder: one run at a time, unfinished runs marked, files written whole.

- :class:`FolderLock`: an exclusive ``flock`` on ``<folder>/.argen-sample.lock``, held for the whole
  run. The kernel drops it when the process exits or is killed, so a crashed run never leaves a
  stale lock; the pid, host, start time and command written into the file only name the holder
  for the error a second run gets.
- ``INCOMPLETE.json``: written before sampling starts (with the settings that determine the
  images) and removed only once ``settings.json`` is written, so a folder whose run was
  interrupted says so; ``argen-sample resume=true`` continues it and ``argen-eval`` refuses it.
- :func:`atomic_write`: temp file in the same folder + ``os.replace``, so a killed process leaves
  either the old file or the new one, never half of one (it does not guard against power loss:
  no fsync).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from argen.core.errors import ConfigError

log = logging.getLogger("argen")

LOCK_NAME = ".argen-sample.lock"
MARKER_NAME = "INCOMPLETE.json"
TEMP_SUFFIX = ".tmp"


class FolderBusyError(RuntimeError):
    """Another argen-sample run holds the output folder's lock."""


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# ---- atomic writes -----------------------------------------------------------------------------
def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """``write(f)`` into a hidden temp file beside ``path`` (``.<name>.<pid>.tmp``: no image suffix, so
    image globs never see it), then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: Path, data: Any) -> Path:
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def remove_temp_files(folder: Path) -> int:
    """Delete temp files a killed process left in ``folder``; returns how many."""
    stale = [p for p in folder.glob(f".*{TEMP_SUFFIX}") if p.is_file()] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


# ---- the lock ----------------------------------------------------------------------------------
class FolderLock:
    """Exclusive lock on an output folder for one run: ``with FolderLock(out): ...``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`FolderBusyError` naming its holder (never waits)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise FolderBusyError(busy_message(self.folder, holder)) from None
        except OSError as e:
            os.close(fd)
            raise RuntimeError(f"cannot lock {self.path}: {e}. Its filesystem does not support flock; choose an "
                               f"output_dir on a local disk or a filesystem that does") from e
        holder_info = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(),
                       "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder_info) + "\n").encode("utf-8"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # a free lock names nobody
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        holder = json.loads(os.pread(fd, 65536, 0).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def busy_message(folder: Path, holder: dict[str, Any] | None) -> str:
    if holder is None:
        who = "another argen-sample run (it has just started: its details are not written yet)"
    else:
        who = (f"another argen-sample run: pid {holder.get('pid')} on host {holder.get('host')}, since "
               f"{holder.get('since')} ({holder.get('command')})")
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
                and not _alive(holder["pid"]):
            who += "; that pid has exited, so a process it started still holds the lock"
    return (f"output folder {folder} is in use by {who}. Two runs in one folder overwrite each other's images: "
            f"wait for that run to finish (or stop it), or give this one another output_dir (or name=...)")


# ---- the incomplete marker -----------------------------------------------------------------------
def write_marker(folder: Path, settings: dict[str, Any], total_images: int) -> Path:
    """Mark ``folder`` as holding an unfinished run of ``settings`` (what determines the images)."""
    return atomic_write_json(folder / MARKER_NAME, {
        "complete": False, "started": _now(), "total_images": total_images, "settings": settings,
        "note": "argen-sample has not finished this folder: continue it with the same command plus "
                "resume=true, or start over with overwrite=true"})


def read_marker(folder: Path) -> dict[str, Any] | None:
    path = folder / MARKER_NAME
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {"complete": False}  # unreadable: still unfinished
    return marker if isinstance(marker, dict) else {"complete": False}


def remove_marker(folder: Path) -> None:
    (folder / MARKER_NAME).unlink(missing_ok=True)


def marker_for(samples: str | Path) -> Path | None:
    """The marker of the sample folder ``samples`` is, or lies in (``samples.npz``, ``images``, ``geneval``)."""
    path = Path(samples)
    candidates = ([path] if path.is_dir() else []) + [path.parent]
    return next((c / MARKER_NAME for c in candidates if (c / MARKER_NAME).is_file()), None)


def check_complete(samples: str | Path, allow_incomplete: bool) -> str | None:
    """Refuse samples of an unfinished argen-sample run; with ``allow_incomplete``, return a warning
    for the report instead (and log it)."""
    if not isinstance(samples, (str, os.PathLike)):
        return None  # a dataset config node, not a folder argen-sample wrote
    marker = marker_for(samples)
    if marker is None:
        return None
    recorded = read_marker(marker.parent) or {}
    images = marker.parent / "images"
    written = sum(1 for _ in images.glob("*.png")) if images.is_dir() else 0
    of = f"{written} of {recorded['total_images']}" if "total_images" in recorded else f"{written}"
    problem = (f"{samples} belongs to an argen-sample run that did not finish ({marker} is there; {of} images "
               f"written)")
    if not allow_incomplete:
        raise ConfigError(f"{problem}. Finish it first: the same argen-sample command with resume=true; or pass "
                          f"allow_incomplete=true to evaluate the partial set anyway")
    warning = f"incomplete samples: {problem}; evaluated anyway (allow_incomplete=true)"
    log.warning("WARNING: %s", warning)
    return warning
