"""The module base every generator (and drafter) shares: where it lives, as the protocol exposes it.

Samplers ask ``generator.device`` / ``generator.dtype`` (:class:`~argen.core.protocols.Generator`)
instead of reading ``next(generator.parameters())``, so a generator that is not one module (a
wrapper, a remote model, a test double) serves them by declaring the two properties.
"""

from __future__ import annotations

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
