"""Lightning module that trains a generator on pre-extracted codes (the model stays a plain
nn.Module with ``loss(tokens, cond)``; any generator of :mod:`argen.generators` fits).

Automatic optimisation, AdamW with weight decay on matrices only (LlamaGen's
``configure_optimizers``: parameters with >= 2 dims decay, norms and biases do not), EMA kept
apart from the raw weights and saved in the checkpoint next to them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from argen.core import Condition
from argen.training.ema import EMA, prepare_ema

OptimizerFactory = Callable[..., Optimizer]


def batch_condition(batch: dict[str, Any]) -> Condition:
    """Condition of a code-cache batch: class ids and captions (each generator reads what it uses)."""
    texts = batch.get("caption")
    return Condition(labels=batch.get("label"), texts=list(texts) if texts is not None else None)


class GeneratorTrainingModule(L.LightningModule):
    """generator: the model; optimizer: partial optimiser (Hydra ``_partial_``) given parameter
    groups; weight_decay: applied to >= 2-D parameters only; lr_schedule: partial LambdaLR factory;
    ema_decay: None disables EMA."""

    def __init__(self, *, generator: nn.Module, optimizer: OptimizerFactory, weight_decay: float = 0.05,
                 lr_schedule: Callable[..., Any] | None = None, ema_decay: float | None = 0.9999,
                 gradient_clip: float | None = 1.0) -> None:
        super().__init__()
        self.generator = generator
        self.optimizer_factory = optimizer
        self.weight_decay = weight_decay
        self.lr_schedule_factory = lr_schedule
        self.gradient_clip = gradient_clip
        self.ema = EMA(generator, decay=ema_decay) if ema_decay is not None else None

    def configure_optimizers(self) -> Any:
        params = [p for p in self.generator.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": self.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        opt = self.optimizer_factory(groups)
        if self.lr_schedule_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.lr_schedule_factory(opt), "interval": "step"}}

    def configure_gradient_clipping(self, optimizer: Optimizer, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        if self.gradient_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip, gradient_clip_algorithm="norm")

    def on_fit_start(self) -> None:
        prepare_ema(self.ema, self.trainer.strategy, self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ema"] = self.ema.state_dict() if self.ema is not None else None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None and checkpoint.get("ema") is not None:
            self.ema.load_state_dict(checkpoint["ema"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.generator.loss(batch["tokens"], batch_condition(batch))
        b = batch["tokens"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in out.logs.items()}, batch_size=b)
        self.log("loss", out.logs["loss"], prog_bar=True, logger=False, batch_size=b)
        return out.loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.generator)
        opt = self.optimizers()
        self.log("train/lr", torch.tensor(opt.param_groups[0]["lr"]), batch_size=1)

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        model = self.ema.module if self.ema is not None else self.generator
        out = model.loss(batch["tokens"], batch_condition(batch))
        b = batch["tokens"].shape[0]
        self.log("val/loss", out.logs["loss"], sync_dist=True, batch_size=b, prog_bar=True)
        for key in ("token_accuracy", "loss_entity0"):  # logits generators; flow generators (xAR)
            if key in out.logs:
                self.log(f"val/{key}", out.logs[key], sync_dist=True, batch_size=b)
