"""Progress that suits its stream: a tqdm bar on a terminal, plain log lines anywhere else.

Off a terminal (a log file, CI, a pipe) a tqdm bar writes carriage returns and redraws that turn a
log into one unreadable line; :class:`LineProgress` writes a line through the ``argen`` logger at
most every ``every_seconds`` and one when it finishes: ``sampling: 120/400 img (30%), 3.1 img/s,
~1 min 30 s left``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

log = logging.getLogger("argen")


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 10 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    return f"{minutes // 60} h {minutes % 60} min"


def rate_and_eta(done: float, total: float | None, elapsed: float, unit: str) -> str:
    """``3.1 img/s, ~1 min 30 s left`` (the estimate only when the total is known)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    text = f"{rate:.3g} {unit}/s"
    if total and rate > 0 and done < total:
        text += f", ~{duration((total - done) / rate)} left"
    return text


class LineProgress:
    """The tqdm calls the CLIs use (iterate, ``update``, ``close``, ``with``), as log lines."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str,
                 unit: str = "it", every_seconds: float = 30.0) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.every_seconds = total, desc, unit, every_seconds
        self.n = 0
        self.start = self.last = time.perf_counter()
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "LineProgress was built without an iterable"
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _counts(self) -> str:
        if not self.total:
            return f"{self.n} {self.unit}"
        return f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.every_seconds and (not self.total or self.n < self.total):
            self.last = now
            log.info("%s: %s, %s", self.desc, self._counts(), rate_and_eta(self.n, self.total, now - self.start,
                                                                          self.unit))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        elapsed = time.perf_counter() - self.start
        log.info("%s: %s in %s (%s)", self.desc, self._counts(), duration(elapsed),
                 rate_and_eta(self.n, None, elapsed, self.unit))


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str, unit: str = "it",
             enabled: bool = True, leave: bool = True, stream: TextIO | None = None) -> Any:
    """A tqdm bar on ``stream`` (default stderr) when it is a terminal, else a :class:`LineProgress`;
    ``enabled=False``: a silent bar (tqdm's own no-op)."""
    stream = stream if stream is not None else sys.stderr
    if not enabled or stream.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, leave=leave, file=stream)
    return LineProgress(iterable, total=total, desc=desc, unit=unit)
