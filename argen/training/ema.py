"""Exponential moving average of a module's weights, kept apart from the raw weights.

The EMA copy is never swapped into the trained module (a checkpoint saved mid-swap is a
known way to lose the raw weights, users.md F16); evaluation and export read
:attr:`EMA.module`, a frozen deep copy.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """``shadow = decay * shadow + (1 - decay) * param`` after every optimiser step.

    ``warmup``: use ``min(decay, (1 + n) / (10 + n))`` for the n-th update so early averages
    are not dominated by the random initialisation (the TF ``ExponentialMovingAverage``
    ``num_updates`` rule). Buffers (e.g. codebook usage) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        ema_params = dict(self.module.named_parameters())
        for name, param in model.named_parameters():
            ema_params[name].lerp_(param.detach().to(ema_params[name].dtype), 1.0 - decay)
        ema_buffers = dict(self.module.named_buffers())
        for name, buf in model.named_buffers():
            ema_buffers[name].copy_(buf)
        self.num_updates += 1

    def to(self, device: torch.device | str) -> EMA:
        self.module.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "weights": {k: v.detach().cpu() for k, v in self.module.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_updates = int(state["num_updates"])
        self.module.load_state_dict(state["weights"], strict=True)


def prepare_ema(ema: EMA | None, strategy: object, device: torch.device) -> None:
    """Move the EMA copy to the training device; refuse FSDP, whose flat shards the copy cannot mirror."""
    if ema is None:
        return
    if type(strategy).__name__ == "FSDPStrategy":
        raise NotImplementedError("EMA is not supported with FSDP yet: use trainer=ddp (the model fits on one "
                                  "GPU) or set module.ema_decay=null")
    ema.to(device)
