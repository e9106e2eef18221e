"""Progress reporting picks the form that suits its stream: a bar on a terminal, log lines elsewhere."""

from __future__ import annotations

import io
import logging
import sys

import pytest
from lightning.pytorch.callbacks import TQDMProgressBar
from tqdm import tqdm

from argen.core.progress import LineProgress, progress
from argen.data.module import DataModule, auto_workers
from argen.training.progress import TrainingProgress, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_logs_plain_lines_off_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="argen"):
        bar = progress(range(5), desc="encode", unit="img", stream=stream)
        assert isinstance(bar, LineProgress)
        assert list(bar) == [0, 1, 2, 3, 4]
    assert stream.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("encode: 5/5 img"), lines


def test_progress_counts_updates_and_can_be_disabled(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="argen"):
        with progress(total=10, desc="sampling", unit="img", stream=io.StringIO()) as bar:
            bar.update(4)
            bar.update(6)
        with progress(total=10, desc="quiet", enabled=False, stream=io.StringIO()) as bar:
            bar.update(10)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("sampling: 10/10 img"), lines


def test_progress_is_a_bar_on_a_terminal() -> None:
    bar = progress(total=3, desc="x", stream=Terminal())
    assert isinstance(bar, tqdm)
    bar.close()


def test_lightning_progress_bar_follows_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert isinstance(progress_bar(), TrainingProgress)
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert isinstance(progress_bar(), TQDMProgressBar)


def test_data_workers_default_to_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    assert auto_workers(cpus=2, processes=1) == 1
    assert auto_workers(cpus=16, processes=1) == 4
    assert auto_workers(cpus=2, processes=2) == 0
    assert auto_workers(cpus=1, processes=1) == 0
    dm = DataModule(train=[0] * 8, num_workers=None)
    assert dm.workers() == auto_workers()
    assert DataModule(train=[0] * 8, num_workers=3).workers() == 3


def test_folder_data_leaves_workers_to_the_machine() -> None:
    from argen.cli.common import compose_config

    assert compose_config("train", ["data=folder", "data.train.root=unused"]).data.num_workers is None
