"""A 1D sequence generator that stops after k tokens: FlexTok's coarse-to-fine sequences decode from any
prefix, so one trained generator samples k = 1..L tokens per image (k forward passes with ancestral
sampling) and the tokenizer renders them.

``PrefixGenerator(generator, k)`` is ``generator`` seen through ``plan(length=k)``: its layout is the
sequence's first k positions; sampling delegates the protocol and nothing else, so every sampler drives it
unchanged. ``argen-sample ... num_tokens=k`` and ``Pipeline(..., num_tokens=k)`` build it; the contract suite
runs it as the ``flextok`` fixture. Its teacher-forced logits and loss are those of the first k positions
(exact for a causal generator: position i < k never sees tokens at k or later, so the view pads the rest).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.core import Condition, LossOutput
from tokenizers_vq.layout import TokenLayout


class PrefixGenerator(nn.Module):
    def __init__(self, generator: Any, length: int) -> None:
        super().__init__()
        layout = generator.layout
        if layout.kind != "sequence":
            raise ValueError(f"num_tokens={length} needs a generator of a 1D sequence (a FlexTok-style tokenizer); "
                             f"this one generates a {layout.kind} {list(layout.shapes)} layout, which decodes only whole")
        if isinstance(length, bool) or not 1 <= int(length) <= layout.length:
            raise ValueError(f"num_tokens must be in 1..{layout.length} for this generator, got {length!r}")
        if generator.capabilities.output != "logits":
            raise ValueError("num_tokens needs a generator of discrete tokens (logits)")
        self.inner, self.length = generator, int(length)
        self.capabilities = generator.capabilities
        self.layout = TokenLayout(kind="sequence", shapes=((1, self.length),), vocab_size=layout.vocab_size,
                                  channels=layout.channels)
        if hasattr(generator, "restart"):
            self.restart = generator.restart

    @property
    def num_classes(self) -> int | None:
        """The inner generator's classes (None: text-conditional), for the pipeline's condition checks."""
        return getattr(self.inner, "num_classes", None)

    @property
    def vocab_size(self) -> int:
        return int(self.layout.vocab_size)

    @property
    def device(self) -> torch.device:
        return self.inner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    # ---- teacher forcing on the prefix --------------------------------------------------------------
    def _padded(self, tokens: Tensor) -> Tensor:
        if tokens.ndim != 2 or tokens.shape[1] != self.length:
            raise ValueError(f"expected (B, {self.length}) tokens (the first {self.length} of the sequence), got "
                             f"{tuple(tokens.shape)}")
        full = torch.zeros(tokens.shape[0], self.inner.layout.length, dtype=tokens.dtype, device=tokens.device)
        full[:, :self.length] = tokens
        return full

    def logits(self, tokens: Tensor, cond: Condition) -> Tensor:
        """Teacher-forced logits (B, k, V) of the first k positions."""
        return self.inner.logits(self._padded(tokens), cond)[:, :self.length]

    def loss(self, tokens: Tensor, cond: Condition) -> LossOutput:
        """Cross-entropy of the first k positions' teacher-forced logits (the inner generator's training-only
        terms, condition dropout and readout, belong to training the full-length generator)."""
        logits = self.logits(tokens, cond)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1))
        return LossOutput(loss=ce, logs={"ce": ce.detach()})

    # ---- what a drafter reads of its target (FeatureTarget), on the prefix --------------------------------
    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def n_head(self) -> int:
        return self.inner.n_head

    def features(self, tokens: Tensor, cond: Condition) -> Tensor:
        return self.inner.features(self._padded(tokens), cond)[:, :self.length]

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        return self.inner.embed_tokens(tokens)

    def head(self, features: Tensor) -> Tensor:
        return self.inner.head(features)

    # ---- sampling -----------------------------------------------------------------------------------
    def plan(self, length: int | None = None) -> list[Tensor]:
        n = self.length if length is None else int(length)
        if not 1 <= n <= self.length:
            raise ValueError(f"plan length {length} is outside 1..{self.length} (this view stops at {self.length})")
        return self.inner.plan(length=n)

    def start(self, cond: Condition, *, max_len: int | None = None) -> Any:
        return self.inner.start(cond, max_len=self.length if max_len is None else max_len)

    def step(self, state: Any, tokens: Tensor, positions: Tensor, query: Tensor) -> Any:
        return self.inner.step(state, tokens, positions, query)

    def null_cond(self, cond: Condition) -> Condition:
        return self.inner.null_cond(cond)

    def extra_repr(self) -> str:
        return f"num_tokens={self.length}"
