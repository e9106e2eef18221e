"""A CSV logger that keeps a run's history across restarts.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its writer starts in a folder that has one
("Previous log files in this directory will be deleted"), so after a crash and ``resume=auto`` the file
held only the steps after the restart. Here the file is kept; the rows from the first step logged after
the restart onward (the killed segment, which the resumed run logs again) are dropped, so every step
appears once, as in an uninterrupted run.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from argen.training.checkpoint_io import write_text_atomic


class _HistoryWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:  # called by the base __init__, in place of deleting the file
        self._trim_pending = os.path.isfile(self.metrics_file_path)
        if self._trim_pending:
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(csv.DictReader(f).fieldnames or [])

    def log_metrics(self, metrics_dict: dict[str, Any], step: int | None = None) -> None:
        if self._trim_pending and step is not None:
            self._drop_rows_from(step)
            self._trim_pending = False
        super().log_metrics(metrics_dict, step)

    def _drop_rows_from(self, step: int) -> None:
        with open(self.metrics_file_path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("step") not in (None, "") and float(r["step"]) < step]
        lines: list[str] = []

        class _Sink:  # csv wants a file; collect lines, then replace the file atomically
            def write(self, text: str) -> None:
                lines.append(text)

        writer = csv.DictWriter(_Sink(), fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.metrics_file_path, "".join(lines))


class HistoryCSVLogger(CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` (same arguments) whose ``metrics.csv`` survives a resume."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(log_dir=self.log_dir)
        return self._experiment
