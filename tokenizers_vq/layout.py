"""TokenLayout: how a tokenizer's tokens are arranged, the vocabulary both packages share.

Tokens are always flattened in layout order: raster order inside a grid, coarse to fine
across the scales of a scale-residual tokenizer, left to right in a 1-D sequence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

LayoutKind = Literal["grid", "scales", "sequence"]


@dataclass(frozen=True)
class TokenLayout:
    """Arrangement of the tokens of one image.

    kind:       "grid" (one (h, w) grid), "scales" (a coarse-to-fine list of grids) or
                "sequence" (one (1, L) row of 1-D tokens).
    shapes:     the (h, w) of each grid; a sequence is ((1, L),).
    vocab_size: number of codes of a discrete tokenizer; None for continuous latents.
    channels:   width of a continuous token; None for discrete tokens.
    """

    kind: LayoutKind
    shapes: tuple[tuple[int, int], ...]
    vocab_size: int | None
    channels: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("grid", "scales", "sequence"):
            raise ValueError(f"unknown layout kind {self.kind!r}")
        if not self.shapes or any(h < 1 or w < 1 for h, w in self.shapes):
            raise ValueError(f"layout shapes must be non-empty positive (h, w) pairs, got {self.shapes}")
        if self.kind in ("grid", "sequence") and len(self.shapes) != 1:
            raise ValueError(f"a {self.kind} layout has exactly one shape, got {self.shapes}")
        if (self.vocab_size is None) == (self.channels is None):
            raise ValueError("exactly one of vocab_size (discrete) and channels (continuous) must be set")

    @property
    def length(self) -> int:
        """Total number of tokens L of one image."""
        return sum(h * w for h, w in self.shapes)

    @property
    def discrete(self) -> bool:
        return self.vocab_size is not None

    @property
    def token_dtype(self) -> torch.dtype:
        """What one token is in memory: int64 code ids, or float32 latents of ``channels`` values."""
        return torch.int64 if self.discrete else torch.float32

    def token_shape(self, batch: int) -> tuple[int, ...]:
        """(B, L) for discrete codes, (B, L, C) for continuous latents."""
        return (batch, self.length) if self.discrete else (batch, self.length, int(self.channels or 0))

    def empty(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """A zeroed token buffer for ``batch`` images in layout order (what samplers fill and return)."""
        return torch.zeros(self.token_shape(batch), dtype=self.token_dtype, device=device)

    def check_tokens(self, tokens: torch.Tensor, *, owner: str) -> None:
        """Tokens of this layout, else a clear error: integer ids in range (discrete) or float latents of
        ``channels`` values per position (continuous)."""
        if self.discrete:
            check_token_ids(tokens, int(self.vocab_size or 0), owner=owner)
            return
        if not tokens.is_floating_point() or tokens.dim() < 2 or tokens.shape[-1] != self.channels:
            raise TypeError(f"the {owner} takes continuous tokens (..., L, {self.channels}) float latents; got "
                            f"{tokens.dtype} of shape {tuple(tokens.shape)} (codes of a discrete tokenizer?)")

    def _pyramid_of(self, other: TokenLayout) -> bool:
        """Whether this is a continuous pyramid of scales whose finest scale is ``other``'s grid (FlowAR's and
        xAR's scale entity: coarse scales are plain downsamplings, the image decodes from the finest)."""
        return (self.kind == "scales" and not self.discrete and other.kind == "grid"
                and self.shapes[-1] == other.shapes[0] and self.channels == other.channels)

    def decodes_as(self, other: TokenLayout) -> bool:
        """Whether tokens of this layout (a generator's) decode with a tokenizer of layout ``other``: the same
        layout, a pyramid whose finest scale is ``other``'s grid, or a prefix of ``other``'s 1D sequence (a
        sequence tokenizer such as FlexTok decodes any prefix 1..L of its tokens)."""
        same = (self.kind, self.shapes, self.vocab_size, self.channels) == \
            (other.kind, other.shapes, other.vocab_size, other.channels)
        prefix = (self.kind == other.kind == "sequence" and self.length <= other.length
                  and (self.vocab_size, self.channels) == (other.vocab_size, other.channels))
        return same or prefix or self._pyramid_of(other)

    def for_decoder(self, tokens: torch.Tensor, other: TokenLayout) -> torch.Tensor:
        """Tokens (B, L[, C]) of this layout as a tokenizer of layout ``other`` decodes them (see
        :meth:`decodes_as`): themselves, or a pyramid's finest scale."""
        if self._pyramid_of(other):
            return tokens[:, -other.length:]
        if not self.decodes_as(other):
            raise ValueError(f"{self.kind} {list(self.shapes)} tokens do not decode with a {other.kind} "
                             f"{list(other.shapes)} tokenizer")
        return tokens

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shapes"] = [list(s) for s in self.shapes]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenLayout:
        return cls(
            kind=d["kind"],
            shapes=tuple(tuple(int(v) for v in s) for s in d["shapes"]),  # type: ignore[misc]
            vocab_size=d.get("vocab_size"),
            channels=d.get("channels"),
        )


def check_token_ids(tokens: torch.Tensor, vocab_size: int, *, owner: str,
                    dtypes: tuple[torch.dtype, ...] = (torch.int64, torch.int32, torch.int16)) -> None:
    """Integer ids (of ``dtypes``) in [0, vocab_size), else a clear error naming ``owner`` (e.g.
    "generator") and the likely cause: tokens from another tokenizer than the one ``owner`` was built for."""
    if tokens.dtype not in dtypes:
        raise TypeError(f"tokens must be integer ids, got {tokens.dtype}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"token ids span [{int(tokens.min())}, {int(tokens.max())}] but the {owner}'s vocabulary "
                         f"has {vocab_size} entries (ids 0..{vocab_size - 1}): vocabulary mismatch between the "
                         f"tokens' tokenizer and this {owner}")
