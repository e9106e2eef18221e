"""Learning-rate schedules as multiplicative factors of the base rate, per optimiser step."""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_constant_factor(step: int, *, warmup_steps: int) -> float:
    return (step + 1) / warmup_steps if warmup_steps > 0 and step < warmup_steps else 1.0


def build_schedule(optimizer: Optimizer, *, kind: Literal["cosine", "constant"] = "cosine",
                   total_steps: int | None = None, warmup_steps: int = 0, min_ratio: float = 0.1) -> LambdaLR:
    """Hydra-friendly (``_partial_: true``) factory of the step-wise LR schedule.

    cosine: linear warm-up then cosine decay to ``min_ratio`` at ``total_steps``;
    constant: linear warm-up then the base rate.
    """
    if kind == "cosine":
        if total_steps is None or total_steps <= 0:
            raise ValueError("a cosine schedule needs total_steps > 0 (it defaults to trainer.max_steps)")
        fn = partial(warmup_cosine_factor, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio)
    elif kind == "constant":
        fn = partial(warmup_constant_factor, warmup_steps=warmup_steps)
    else:
        raise ValueError(f"unknown schedule kind {kind!r}; use 'cosine' or 'constant'")
    return LambdaLR(optimizer, fn)
