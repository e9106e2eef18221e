"""Test-only Lightning callbacks, injected through Hydra (``+callbacks.x={_target_: tests.helpers...}``),
and interruptions of argen-sample at a chosen batch."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILL this process right after optimisation step ``step`` (no cleanup, like a crash or OOM kill)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if getattr(pl_module, "batches_done", trainer.global_step) == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class RecordBatches(L.Callback):
    """Append ``step: [sample indices]`` of every training batch to ``path`` (one JSON line each)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        import json

        with open(self.path, "a") as f:
            f.write(json.dumps({"step": getattr(pl_module, "batches_done", trainer.global_step),
                                "epoch": trainer.current_epoch, "index": batch["index"].tolist()}) + "\n")



def decode_calling(decode: Callable[..., Any], batches: int, action: Callable[[], None]) -> Callable[..., Any]:
    """The pipeline's ``decode`` that calls ``action()`` when batch ``batches + 1`` starts decoding (so
    ``batches`` batches are written); patch it over ``argen.pipeline.decode``."""
    calls = {"n": 0}

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == batches + 1:
            action()
        return decode(*args, **kwargs)

    return wrapped


def sample_killed_after(batches: int) -> None:
    """Run ``argen-sample`` (arguments from ``sys.argv``) and SIGKILL it when batch ``batches + 1`` starts
    decoding: no cleanup, no ``finally``, like an OOM kill or a preempted job."""
    import argen.cli.sample as sample_cli
    import argen.pipeline as pipeline

    pipeline.decode = decode_calling(pipeline.decode, batches, lambda: os.kill(os.getpid(), signal.SIGKILL))
    sample_cli.main()
