"""The module base every generator (and drafter) shares: where it lives, as the protocol exposes it.

Samplers ask ``generator.device`` / ``generator.dtype`` (:class:`~argen.core.protocols.Generator`)
instead of reading ``next(generator.parameters())``, so a generator that is not one module (a
wrapper, a remote model, a test double) serves them by declaring the two properties.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class GeneratorModule(nn.Module):
    """An ``nn.Module`` whose ``device`` and ``dtype`` are those of its parameters (its first floating
    buffer when it has no parameters; the CPU / float32 when it has neither)."""

    def _first_tensor(self) -> torch.Tensor | None:
        for p in self.parameters():
            return p
        for b in self.buffers():
            if b.is_floating_point():
                return b
        return None

    @property
    def device(self) -> torch.device:
        t = self._first_tensor()
        return torch.device("cpu") if t is None else t.device

    @property
    def dtype(self) -> torch.dtype:
        t = self._first_tensor()
        return torch.float32 if t is None else t.dtype


class AdaLNConditioned:
    """What a generator conditioned through ``self.cond_embed`` (a class table or a caption encoder, read by
    adaLN: VAR, xAR) says about its condition: the class count (None for text), the training dropout of
    the condition, and the null condition CFG runs beside it."""

    cond_embed: nn.Module

    @property
    def text(self) -> bool:
        return getattr(self.cond_embed, "num_classes", None) is None

    @property
    def num_classes(self) -> int | None:
        return None if self.text else int(self.cond_embed.num_classes)  # type: ignore[arg-type]

    @property
    def condition_dropout(self) -> float:
        return float(getattr(self.cond_embed, "dropout", 0.0))

    def null_cond(self, cond: Any) -> Any:
        return cond.as_null()
