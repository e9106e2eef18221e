"""What a generator is conditioned on: class ids, captions, or both, plus a per-row null flag.

A batch of conditions travels as one object so that classifier-free guidance can double it
(``cat`` with ``null()``) without knowing whether the generator is class- or text-conditional.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Condition:
    """labels: (B,) int64 class ids; texts: B captions; null: (B,) bool rows to replace by the
    null condition (CFG's unconditional branch, and condition dropout in training)."""

    labels: Tensor | None = None
    texts: Sequence[str] | None = None
    null: Tensor | None = None

    def __post_init__(self) -> None:
        n = {len(x) for x in (self.labels, self.texts, self.null) if x is not None}
        if len(n) > 1:
            raise ValueError(f"condition parts disagree on the batch size: {sorted(n)}")
        if not n:
            raise ValueError("a Condition needs labels, texts or a null mask (for unconditional generation)")
        if self.labels is not None and self.labels.dtype != torch.int64:
            self.labels = self.labels.long()

    def __len__(self) -> int:
        for x in (self.labels, self.texts, self.null):
            if x is not None:
                return len(x)
        return 0

    @property
    def device(self) -> torch.device:
        for x in (self.labels, self.null):
            if x is not None:
                return x.device
        return torch.device("cpu")

    def null_mask(self) -> Tensor:
        """(B,) bool; all False when nothing is nulled."""
        if self.null is None:
            return torch.zeros(len(self), dtype=torch.bool, device=self.device)
        return self.null.to(torch.bool)

    def as_null(self) -> Condition:
        """The same rows with every one replaced by the null condition (CFG's unconditional half)."""
        return Condition(labels=self.labels, texts=self.texts,
                         null=torch.ones(len(self), dtype=torch.bool, device=self.device))

    def with_dropout(self, prob: float, generator: torch.Generator | None = None) -> Condition:
        """Null each row with probability ``prob`` (CFG training, LlamaGen's ``token_drop``)."""
        if prob <= 0:
            return self
        drop = torch.rand(len(self), generator=generator, device=self.device) < prob
        return Condition(labels=self.labels, texts=self.texts, null=self.null_mask() | drop)

    def cat(self, other: Condition) -> Condition:
        """Stack two batches (rows of ``self`` first)."""
        def both(a, b):  # noqa: ANN001, ANN202
            if (a is None) != (b is None):
                raise ValueError("cannot concatenate conditions with different parts")
            return a, b
        labels = texts = None
        if self.labels is not None or other.labels is not None:
            a, b = both(self.labels, other.labels)
            labels = torch.cat([a, b])
        if self.texts is not None or other.texts is not None:
            a, b = both(self.texts, other.texts)
            texts = list(a) + list(b)
        null = torch.cat([self.null_mask(), other.null_mask().to(self.device)])
        return Condition(labels=labels, texts=texts, null=null)

    def index(self, rows: Tensor | slice) -> Condition:
        """A subset of rows (``rows``: index tensor or slice)."""
        if isinstance(rows, slice):
            ids = list(range(len(self)))[rows]
        elif rows.dtype == torch.bool:
            if rows.shape != (len(self),):
                raise ValueError(f"a boolean row mask must have shape ({len(self)},), got {tuple(rows.shape)}")
            ids = torch.nonzero(rows.cpu()).flatten().tolist()
        else:
            ids = [int(i) for i in rows.tolist()]
        idx = torch.tensor(ids, dtype=torch.long, device=self.device)
        return Condition(labels=None if self.labels is None else self.labels[idx],
                         texts=None if self.texts is None else [self.texts[i] for i in ids],
                         null=self.null_mask()[idx])

    def to(self, device: torch.device | str) -> Condition:
        return Condition(labels=None if self.labels is None else self.labels.to(device), texts=self.texts,
                         null=None if self.null is None else self.null.to(device))
