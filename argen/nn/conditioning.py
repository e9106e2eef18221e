"""Condition embedders: a class table with a null row, and captions through a text encoder.

Both turn a :class:`~argen.core.Condition` into prefix embeddings (B, T, C) plus a (B, T) bool
mask of valid slots (None when every slot is valid), the way LlamaGen feeds its condition as
the first ``cls_token_num`` positions (algorithms.md 2.3). Null rows (CFG's unconditional half,
or condition dropout in training) use the null class ``num_classes`` / the fixed
``uncond_embedding`` caption, as LlamaGen's ``LabelEmbedder`` / ``CaptionEmbedder`` do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.core.condition import Condition


def _kept(logits: Tensor, cond: Condition) -> Tensor | None:
    """The rows of ``cond`` a condition readout learns from (not null), as a (B,) bool mask on ``logits``'
    device; None when there are none."""
    keep = ~cond.null_mask().to(logits.device)
    return keep if bool(keep.any()) else None


class ClassEmbedder(nn.Module):
    """One prefix token per class id; row ``num_classes`` is the null class (LlamaGen's 1000)."""

    def __init__(self, *, num_classes: int, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.dropout = dropout
        self.num_tokens = 1
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def check(self, cond: Condition) -> None:
        if cond.labels is None:
            if bool(cond.null_mask().all()):
                return
            raise ValueError("this generator is class-conditional: give class ids (labels), not captions")
        labels = cond.labels[~cond.null_mask()]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)][0].item()
            raise ValueError(f"class id {bad} is out of range: this generator has {self.num_classes} classes "
                             f"(ids 0..{self.num_classes - 1})")

    def forward(self, cond: Condition) -> tuple[Tensor, Tensor | None]:
        self.check(cond)
        null = cond.null_mask().to(self.embedding_table.weight.device)
        labels = cond.labels.to(null.device) if cond.labels is not None else torch.zeros_like(null, dtype=torch.long)
        labels = torch.where(null, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels).unsqueeze(1), None  # (B, 1, C)

    @property
    def readout_size(self) -> int:
        """Outputs of a condition readout head (:meth:`readout_loss`): one logit per class."""
        return self.num_classes

    def readout_loss(self, logits: Tensor, cond: Condition) -> Tensor:
        """Cross-entropy of every position's readout ``logits`` (B, L, num_classes) against the row's class,
        over the rows that are not null (0 when all are)."""
        keep = _kept(logits, cond)
        if cond.labels is None or keep is None:
            return logits.sum() * 0.0
        labels = cond.labels.to(logits.device)[keep]
        rows = logits[keep].float()  # (R, L, K)
        return F.cross_entropy(rows.reshape(-1, rows.shape[-1]), labels.repeat_interleave(rows.shape[1]))


class MLP(nn.Module):
    """fc1 -> GELU(tanh) -> fc2, no biases (LlamaGen's caption projection)."""

    def __init__(self, *, in_features: int, hidden_features: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TextConditioner(nn.Module):
    """Caption features from ``encoder`` (``num_tokens`` slots, left-padded), projected to the model
    width by ``cap_proj``; null rows get ``uncond_embedding`` (a fixed random caption, as LlamaGen)."""

    def __init__(self, *, encoder: nn.Module, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = dropout
        self.num_tokens = int(encoder.max_length)
        width = int(encoder.out_dim)
        self.cap_proj = MLP(in_features=width, hidden_features=dim, out_features=dim)
        self.register_buffer("uncond_embedding", torch.randn(self.num_tokens, width) / width**0.5)

    def check(self, cond: Condition) -> None:
        if cond.texts is None and not bool(cond.null_mask().all()):
            raise ValueError("this generator is text-conditional: give prompts (texts), not class ids")

    def forward(self, cond: Condition) -> tuple[Tensor, Tensor | None]:
        self.check(cond)
        device = self.uncond_embedding.device
        null = cond.null_mask().to(device)
        b = len(cond)
        if cond.texts is None:
            feats = self.uncond_embedding.expand(b, -1, -1)
            valid = torch.ones(b, self.num_tokens, dtype=torch.bool, device=device)
        else:
            feats, valid = self.encoder(list(cond.texts))  # (B, T, D), (B, T)
            feats, valid = feats.to(device), valid.to(device)
            feats = torch.where(null[:, None, None], self.uncond_embedding.to(feats.dtype)[None], feats)
            valid = valid | null[:, None]
        return self.cap_proj(feats), (None if bool(valid.all()) else valid)

    @property
    def readout_size(self) -> int:
        """Outputs of a condition readout head (:meth:`readout_loss`): one logit per word of the encoder's
        vocabulary (``<pad>``, ``<unk>``, ``<eos>`` included, never targets)."""
        if not hasattr(self.encoder, "stoi"):
            raise ValueError(f"a condition readout predicts the caption's words, so it needs a word-level text "
                             f"encoder (WordTextEncoder); {type(self.encoder).__name__} has no word vocabulary: "
                             f"set generator.condition_readout=0")
        return len(self.encoder.itos)

    def readout_loss(self, logits: Tensor, cond: Condition) -> Tensor:
        """Binary cross-entropy of every position's readout ``logits`` (B, L, words) against the bag of the
        caption's words (multi-hot; the special ids are never targets), over the rows that are not null."""
        keep = _kept(logits, cond)
        if cond.texts is None or keep is None:
            return logits.sum() * 0.0
        ids, valid = self.encoder.tokenize([t for t, k in zip(cond.texts, keep.tolist()) if k])
        target = torch.zeros(ids.shape[0], logits.shape[-1], device=logits.device)
        target.scatter_(1, ids.to(logits.device), valid.to(logits.device).float())
        target[:, : self.encoder.num_special] = 0.0  # <pad>, <unk>, <eos>
        rows = logits[keep].float()  # (R, L, W)
        return F.binary_cross_entropy_with_logits(rows, target[:, None].expand_as(rows))


def pooled_condition(embedder: nn.Module, cond: Condition) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """What an adaLN generator (VAR, xAR) reads of a condition: -> the adaLN vector (B, C) (a class's
    embedding, or the masked mean of the caption's slots), the text prefix (B, T, C) or None for a class,
    and the prefix's validity (B, T) or None (all valid)."""
    emb, valid = embedder(cond)  # (B, T, C), (B, T) | None
    if getattr(embedder, "num_classes", None) is not None:
        return emb[:, 0], None, None
    if valid is None:
        return emb.mean(1), emb, None
    w = valid.to(emb.dtype)[..., None]
    return (emb * w).sum(1) / w.sum(1).clamp_min(1), emb, valid


class TimestepEmbedder(nn.Module):
    """A flow or diffusion time as a vector (DiT's, as xAR uses it, algorithms.md 4.3): the sinusoidal
    features [cos, sin] (``frequencies`` of them, periods up to ``max_period``) of ``t * scale`` truncated to
    an integer (xAR feeds ``long(t * 1000)``), then Linear -> SiLU -> Linear (``mlp.0``, ``mlp.2``)."""

    def __init__(self, *, dim: int, frequencies: int = 256, scale: float = 1000.0, max_period: float = 10000.0,
                 integer: bool = True) -> None:
        super().__init__()
        self.frequencies, self.scale, self.max_period, self.integer = frequencies, scale, max_period, integer
        self.mlp = nn.Sequential(nn.Linear(frequencies, dim), nn.SiLU(), nn.Linear(dim, dim))

    def features(self, t: Tensor) -> Tensor:
        """t (...,) in [0, 1] -> (..., frequencies) sinusoidal features (float32)."""
        steps = t.float() * self.scale
        steps = steps.long().float() if self.integer else steps  # the official truncation toward zero
        half = self.frequencies // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=t.device).float() / half)
        args = steps[..., None] * freqs
        out = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return F.pad(out, (0, self.frequencies % 2))

    def forward(self, t: Tensor) -> Tensor:
        """t (...,) -> (..., dim)."""
        return self.mlp(self.features(t).to(self.mlp[0].weight.dtype))
