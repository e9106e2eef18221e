"""What a training run prints: plain progress lines off a terminal, a one-line model summary, and
none of Lightning's tips or deprecation notices about its own internals.

* :func:`progress_bar` (``callbacks.progress``): Lightning's tqdm bar on a terminal; elsewhere
  :class:`TrainingProgress`, a log line every ``every_n_steps`` (``step 250/2000 (12%) loss 0.12
  psnr 24.1 | 4.2 steps/s, ~7 min left``), one per validation and one at the end.
* :class:`BriefModelSummary` (``callbacks.model_summary``): parameter counts in one line (Lightning's
  table reports ``Total FLOPs: 0`` for every model that declares no example input).
* :func:`quiet_lightning`: drops Lightning's advertisement and the notices it raises about torch
  APIs it calls itself (nothing a user can change).
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, ProgressBar, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from argen.core.progress import duration, rate_and_eta

log = logging.getLogger("argen")


class TrainingProgress(ProgressBar):
    """Progress as log lines (rank zero): every ``every_n_steps`` optimiser steps, after each
    validation, and when training ends."""

    def __init__(self, *, every_n_steps: int = 50) -> None:
        super().__init__()
        self.every_n_steps = max(1, every_n_steps)
        self._enabled = True
        self._start = 0.0
        self._start_step = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _figures(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        return " ".join(f"{k} {v}" if isinstance(v, str) else f"{k} {v:.4g}" for k, v in metrics.items())

    def _where(self, trainer: L.Trainer) -> str:
        step, total = trainer.global_step, trainer.max_steps
        if total and total > 0:
            return f"step {step}/{total} ({100 * step / total:.0f}%)"
        return f"step {step} (epoch {trainer.current_epoch})"

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._start_step = time.perf_counter(), trainer.global_step
        if self._enabled:
            log.info("training from step %d to %s", trainer.global_step,
                     trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else "the last epoch")

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if not self._enabled or step % self.every_n_steps != 0 or step == trainer.max_steps:
            return  # the last step is reported by on_train_end
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        speed = rate_and_eta(step - self._start_step, total and total - self._start_step,
                             time.perf_counter() - self._start, "steps")
        log.info("%s %s | %s", self._where(trainer), self._figures(trainer, pl_module), speed)

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        figures = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith("val/") and getattr(v, "numel", lambda: 1)() == 1}
        log.info("validation at step %d: %s", trainer.global_step,
                 " ".join(f"{k} {v:.4g}" for k, v in sorted(figures.items())) or "no metrics")

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled:
            return
        elapsed = time.perf_counter() - self._start
        log.info("%s %s | %d steps in %s", self._where(trainer), self._figures(trainer, pl_module),
                 trainer.global_step - self._start_step, duration(elapsed))


def progress_bar(*, refresh_rate: int = 10, every_n_steps: int = 50) -> ProgressBar:
    """Lightning's tqdm bar (``refresh_rate`` batches per redraw) when stdout, where it draws, is a
    terminal; else :class:`TrainingProgress` every ``every_n_steps`` steps."""
    if sys.stdout.isatty():
        return TQDMProgressBar(refresh_rate=refresh_rate)
    return TrainingProgress(every_n_steps=every_n_steps)


class BriefModelSummary(ModelSummary):
    """``model: VQTokenizer (tokenizer 42.6 K, loss 0): 42.6 K parameters, 42.6 K trainable, 0.17 MB``."""

    def __init__(self) -> None:
        super().__init__(max_depth=1)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        summary = self._summary(trainer, pl_module)
        data = dict(summary._get_summary_data())
        parts = ", ".join(f"{name} {params.strip()}" for name, params in zip(data.get("Name", []),
                                                                               data.get("Params", [])))
        model = next((getattr(pl_module, k) for k in ("tokenizer", "generator") if hasattr(pl_module, k)), pl_module)
        log.info("model: %s (%s): %s parameters, %s trainable, %.2f MB", type(model).__name__, parts,
                 get_human_readable_count(summary.total_parameters),
                 get_human_readable_count(summary.trainable_parameters), summary.model_size)


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


def quiet_lightning() -> None:
    """Filters for what Lightning says that is not about this run (idempotent; CLI use only)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages("litlogger"))  # "Tip: ... try installing litlogger"
    # Lightning 2.6 calls torch APIs that torch 2.9+ deprecates; one line per process, not actionable.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")
    # DDP's reducer says "Grad strides do not match bucket view strides" when a gradient's memory
    # layout differs from its parameter's (on some torch builds, channels-last activations such as
    # the quantiser's permuted latents give conv weights such gradients); it costs a copy into the
    # bucket, not correctness. On torch 2.14 no argen preset has such a gradient (every tokenizer
    # and generator checked), so it is shown once per process instead of at every backward.
    warnings.filterwarnings("once", message="Grad strides do not match bucket view strides")
