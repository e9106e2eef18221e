"""The LlamaGen-style prefix GPT every decoder-only token generator here is a configuration of (raster,
NAR; Token-Shuffle next): the condition prefix (one class token, or a caption's slots), the token
embedding, the Llama blocks, the final norm and output head, the rotary table of the layout, LlamaGen's
init, and the decode state's allocation and per-row restart. What a generator adds is its order: the plan,
the mask its slots attend with, and how its outputs become the logits of each position
(:class:`~argen.generators.raster.RasterGenerator`: one head, causal in slots;
:class:`~argen.generators.nar.NARGenerator`: a second head after extra blocks, the proximity mask).

Slots: condition slot ``s`` (< prefix), then layout position ``p`` at slot ``prefix + p`` for generators
that keep positions at their own slots (NAR), or at the slot of its turn (raster, whose turn is its position).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.core import Condition, DecodeState, LossOutput
from argen.core.state import allocate_kv, round_up
from argen.nn.blocks import RMSNorm, TransformerBlock, swiglu_hidden
from argen.nn.module import GeneratorModule
from argen.nn.rope import rope_1d, rope_2d
from argen.nn.trunk import row_slots, run_layers
from tokenizers_vq.layout import TokenLayout, check_token_ids


def grid_shape(grid_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(height, width) of a grid given as one side (a square) or as (height, width)."""
    if isinstance(grid_size, int):
        return grid_size, grid_size
    h, w = (int(x) for x in grid_size)
    return h, w


def raster_layout(vocab_size: int, grid_size: int | tuple[int, int] | None, sequence_length: int | None,
                  head_dim: int, *, rope_base: float, prefix: int = 0, zero_prefix: bool = True,
                  rope_grid: tuple[int, int] | None = None) -> tuple[TokenLayout, Tensor]:
    """The layout of a raster sequence (a ``grid_size`` square, or (height, width), in raster order, 2D
    RoPE, or a 1D sequence of ``sequence_length``, 1D RoPE) and its rotary table (prefix + L, hd/2, 2);
    ``rope_grid``: the 2D grid of the trunk's positions when it is not the layout's (Token-Shuffle's
    windows), giving a table of prefix + h * w rows."""
    if (grid_size is None) == (sequence_length is None):
        raise ValueError("give exactly one of grid_size (2D raster) and sequence_length (1D tokens)")
    if grid_size is not None:
        h, w = grid_shape(grid_size)
        layout = TokenLayout(kind="grid", shapes=((h, w),), vocab_size=vocab_size)
        rh, rw = (h, w) if rope_grid is None else rope_grid
        return layout, rope_2d(rh, rw, head_dim, base=rope_base, prefix=prefix, zero_prefix=zero_prefix)
    assert sequence_length is not None
    layout = TokenLayout(kind="sequence", shapes=((1, sequence_length),), vocab_size=vocab_size)
    return layout, rope_1d(sequence_length, head_dim, base=rope_base, prefix=prefix, zero_prefix=zero_prefix)


def consecutive_feed(fed: Tensor, positions: Tensor, length: int, *, order: str) -> Tensor:
    """Per-row counts (B,) of the fed ``positions`` (B, F) (indices along the generator's chain, -1 after a
    row's last), after checking that they continue each row's sequence from its ``fed`` (B,) and stay
    below ``length``; ``order`` names the chain in the error."""
    counts = (positions >= 0).sum(1)
    j = torch.arange(positions.shape[1])[None]
    inside = j < counts[:, None]
    expected = fed[:, None] + j
    if bool(((positions >= 0) != inside).any()) or bool((positions != expected)[inside].any()):
        bad = int(((positions != expected) & inside | ((positions >= 0) != inside)).any(1).nonzero()[0])
        raise ValueError(f"{order} steps feed consecutive positions of the {order} order from each row's last one: "
                         f"row {bad} has fed {int(fed[bad])}, got {positions[bad].tolist()} (-1 only after its last)")
    if bool((positions >= length).any()):
        raise ValueError(f"positions {positions.max().item()} go past the last position {length - 1}")
    return counts


class PrefixGPT(GeneratorModule, ABC):
    """The shared parts, named as LlamaGen's ``Transformer`` (so official checkpoints map by a documented,
    nearly-identity key table): ``cls_embedding`` (the condition embedder ``condition(dim=dim)``),
    ``tok_embeddings``, ``layers`` (``n_layer + extra_blocks`` Llama blocks: NAR keeps its extra block as
    ``layers.{n_layer}``), ``norm``, ``output``. Dropouts and init follow LlamaGen (token/resid/ffn 0.1,
    attention 0, N(0, 0.02), zero-initialised ``output``); heads a subclass adds in :meth:`_add_heads` are
    initialised the same way before ``output`` is zeroed."""

    def __init__(self, *, vocab_size: int, dim: int, n_layer: int, n_head: int,
                 condition: Callable[..., nn.Module], grid_size: int | tuple[int, int] | None = None,
                 sequence_length: int | None = None, multiple_of: int = 256, ffn_dim_multiplier: float | None = None,
                 norm_eps: float = 1e-5, rope_base: float = 10000.0, zero_condition_rope: bool = True,
                 token_dropout: float = 0.1, attn_dropout: float = 0.0, resid_dropout: float = 0.1,
                 ffn_dropout: float = 0.1, initializer_range: float = 0.02, extra_blocks: int = 0,
                 condition_readout: float = 0.0, readout_layer: int | None = None,
                 rope_grid: tuple[int, int] | None = None) -> None:
        super().__init__()
        if (grid_size is None) == (sequence_length is None):
            raise ValueError("give exactly one of grid_size (2D raster) and sequence_length (1D tokens)")
        self.vocab_size, self.dim, self.n_layer, self.n_head = vocab_size, dim, n_layer, n_head
        self.norm_eps = norm_eps
        self.cls_embedding = condition(dim=dim)
        self.prefix_len = int(self.cls_embedding.num_tokens)
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.tok_dropout = nn.Dropout(token_dropout)
        hidden = swiglu_hidden(dim, multiple_of, ffn_dim_multiplier)
        self.layers = nn.ModuleList(
            TransformerBlock(dim=dim, n_head=n_head, ffn_hidden=hidden, norm_eps=norm_eps, attn_dropout=attn_dropout,
                             resid_dropout=resid_dropout, ffn_dropout=ffn_dropout)
            for _ in range(n_layer + extra_blocks))
        self.norm = RMSNorm(dim, norm_eps)
        self.output = nn.Linear(dim, vocab_size, bias=False)
        self.condition_readout = float(condition_readout)
        if self.condition_readout < 0:
            raise ValueError(f"condition_readout is a loss weight, >= 0; got {condition_readout}")
        self.readout_layer = None if readout_layer is None else int(readout_layer)
        if self.readout_layer is not None and not 1 <= self.readout_layer <= n_layer:
            raise ValueError(f"readout_layer counts the blocks the condition readout reads after: 1..{n_layer} "
                             f"(null: the final features), got {readout_layer}")
        if self.condition_readout:
            if type(self).readout_features_and_logits is PrefixGPT.readout_features_and_logits:
                raise ValueError(f"condition_readout needs the teacher-forced features, which "
                                 f"{type(self).__name__} does not expose: set generator.condition_readout=0")
            self.readout = nn.Linear(dim, int(self.cls_embedding.readout_size))
        self._add_heads()
        head_dim = dim // n_head
        self.layout, table = raster_layout(vocab_size, grid_size, sequence_length, head_dim, rope_base=rope_base,
                                           prefix=self.prefix_len, zero_prefix=zero_condition_rope,
                                           rope_grid=rope_grid)
        self.register_buffer("rope", table, persistent=False)  # (prefix + trunk positions, hd/2, 2)
        self._init_weights(initializer_range)

    tokens_per_slot = 1  # layout positions per trunk slot (Token-Shuffle: s^2)

    def _add_heads(self) -> None:
        """Modules beyond the shared ones (NAR's second head); called before the init."""

    def _init_weights(self, std: float) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and module is not self.output:
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        nn.init.zeros_(self.output.weight)

    @property
    def seq_len(self) -> int:
        return self.layout.length

    @property
    def condition_dropout(self) -> float:
        return float(getattr(self.cls_embedding, "dropout", 0.0))

    @property
    def num_classes(self) -> int | None:
        """Classes of a class-conditional generator; None when it is text-conditional."""
        n = getattr(self.cls_embedding, "num_classes", None)
        return None if n is None else int(n)

    def null_cond(self, cond: Condition) -> Condition:
        return cond.as_null()

    def check_tokens(self, tokens: Tensor) -> None:
        check_token_ids(tokens, self.vocab_size, owner="generator", dtypes=(torch.int64, torch.int32))

    @abstractmethod
    def logits(self, tokens: Tensor, cond: Condition) -> Tensor:
        """Teacher-forced logits (B, L, V) of every position, in the generator's order."""

    def readout_features_and_logits(self, tokens: Tensor, cond: Condition) -> tuple[Tensor | None, Tensor]:
        """The teacher-forced features the condition readout reads (B, L, C) (None where a generator does not
        expose them) and the logits."""
        return None, self.logits(tokens, cond)

    def loss(self, tokens: Tensor, cond: Condition) -> LossOutput:
        """One cross-entropy over the teacher-forced logits of every position (condition dropout in
        training, as :meth:`Condition.with_dropout`); with ``condition_readout`` > 0, plus that weight
        times the condition readout loss.

        The condition readout (not in LlamaGen; off by default, so the loss is LlamaGen's): a linear head
        ``readout`` on every position's features (the final ones, or after block ``readout_layer``,
        normalised) predicts the condition (the caption's bag of words,
        or the class), so that every image token, not only the few whose code depends on the caption,
        sends gradient through the attention to the condition slots. Measured (issue 14,
        ``scripts/binding_toy.py``): the step at which a colour word is read falls from ~1000 to ~200.
        The head is never used for sampling."""
        if self.training:
            cond = cond.with_dropout(self.condition_dropout)
        feats, logits = self.readout_features_and_logits(tokens, cond) if self.condition_readout else \
            (None, self.logits(tokens, cond))
        ce = F.cross_entropy(logits.reshape(-1, self.vocab_size), tokens.reshape(-1))
        with torch.no_grad():
            acc = (logits.argmax(-1) == tokens).float().mean()
        logs = {"loss": ce.detach(), "token_accuracy": acc}
        loss = ce
        if self.condition_readout:
            assert feats is not None
            readout = self.cls_embedding.readout_loss(self.readout(feats), cond)
            loss = ce + self.condition_readout * readout
            logs["condition_readout"] = readout.detach()
        return LossOutput(loss=loss, logs=logs)

    def readout_input(self, final: Tensor, mid: Tensor | None) -> Tensor:
        """What the condition readout reads: the final features, or the layer-normalised output of the first
        ``readout_layer`` blocks (:meth:`trunk`'s ``mid``)."""
        return final if mid is None else F.layer_norm(mid, (self.dim,))

    def embed_condition(self, cond: Condition) -> tuple[Tensor, Tensor | None]:
        """The condition prefix (B, T, C) and its valid slots (B, T) bool, or None when all are valid."""
        return self.cls_embedding(cond)

    def prefixed(self, tokens: Tensor, cond: Condition) -> tuple[Tensor, Tensor | None]:
        """The teacher-forced input (B, T + F, C): the condition prefix, then the embeddings of ``tokens``
        (B, F), token dropout applied; and its valid keys (B, T + F) (None when every key is valid)."""
        prefix, valid = self.embed_condition(cond)  # (B, T, C), (B, T) | None
        h = self.tok_dropout(torch.cat([prefix, self.tok_embeddings(tokens)], dim=1))
        key_valid = None if valid is None else torch.cat([valid, valid.new_ones(tokens.shape)], dim=1)
        return h, key_valid

    def trunk(self, h: Tensor, key_valid: Tensor | None, split: int | None = None) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced trunk over inputs (B, T + N, C) (the condition prefix, then N inputs): the final
        features (B, N + 1, C) of the last condition slot and every input (slot ``prefix - 1 + i``
        predicts what comes after input i - 1) and, with ``split``, the output of the first ``split``
        blocks at the same slots."""
        rope = self.rope[: h.shape[1]]
        k = len(self.layers) if split is None else split
        mid = run_layers(self.layers[:k], h, rope, key_valid=key_valid)
        h = self.norm(run_layers(self.layers[k:], mid, rope, key_valid=key_valid))
        start = self.prefix_len - 1
        return h[:, start:], (None if split is None else mid[:, start:])

    def step_slots(self, state: DecodeState, counts: Tensor, n: int) -> tuple[Tensor, int]:
        """The slots (B, t + n) the next :meth:`advance` gives its inputs, [condition part (t) | fed part
        (n)], -1 for padding (the condition part is real for pending rows only), and t: the prefix length
        when a condition runs in that pass, else 0. A generator reads them to find its queries' inputs
        before anything runs; nothing to run at all is an error."""
        pend = state.is_pending()
        t = self.prefix_len if bool(pend.any()) else 0
        if not (t or n):
            raise ValueError("nothing to feed: the first step runs the condition, later steps need tokens")
        base = state.lengths + t * pend.long()
        return torch.cat([row_slots(state.lengths, t * pend.long(), t), row_slots(base, counts, n)], dim=1), t

    def advance(self, state: DecodeState, inputs: Tensor | None, counts: Tensor) -> tuple[Tensor, Tensor]:
        """One decoding pass of the trunk: run the condition prefix of the rows whose condition is pending,
        then ``counts[b]`` of row b's ``inputs`` (B, N, C) (left-aligned; None when N = 0), each at the next
        slots of its row. Returns the final features (B, t + N, C) (t: the prefix length when a condition
        ran in this pass, else 0) and their slots (B, t + N) (-1: padding); ``state.lengths`` advances,
        ``state.fed`` is the caller's (what a slot holds is the generator's)."""
        n = 0 if inputs is None else inputs.shape[1]
        slots, t = self.step_slots(state, counts, n)
        parts = ([state.pending] if t else []) + ([inputs] if n else [])
        h = torch.cat(parts, dim=1)  # (B, t + n, C)
        # rope rows are indexed by slot: condition slot s (< prefix), or trunk position s - prefix
        h = self.norm(run_layers(self.layers, h, self.rope[slots.clamp_min(0).to(self.rope.device)], state, slots))
        state.lengths = state.lengths + t * state.is_pending().long() + counts
        if t:
            state.pending_rows = None
            state.pending = None
        return h, slots

    def start(self, cond: Condition, *, max_len: int | None = None) -> DecodeState:
        """Allocate the KV caches of every block (prefix + L slots, rounded up to 8 as LlamaGen) for
        ``cond``'s rows; each row's condition prefix runs with its first ``step``."""
        prefix, valid = self.embed_condition(cond)
        param = self.output.weight
        b = prefix.shape[0]
        length = self.seq_len if max_len is None else max_len
        slots = round_up(self.prefix_len + -(-length // self.tokens_per_slot), 8)
        caches = allocate_kv(len(self.layers), b, self.n_head, slots, self.dim // self.n_head, like=param)
        key_valid = None
        if valid is not None:
            key_valid = torch.ones(b, slots, dtype=torch.bool, device=param.device)
            key_valid[:, : self.prefix_len] = valid
        return DecodeState(caches=caches, batch_size=b, prefix_len=self.prefix_len, max_len=slots,
                           pending=prefix.to(param.dtype), key_valid=key_valid, tokens_per_slot=self.tokens_per_slot)

    def restart(self, state: DecodeState, rows: Tensor, cond: Condition) -> None:
        """Begin new samples in ``rows`` (R,) of ``state`` with conditions ``cond`` (R rows), the other
        rows untouched (continuous batching): their prefixes run with the next step."""
        rows = torch.as_tensor(rows, dtype=torch.long).cpu()
        prefix, valid = self.embed_condition(cond)
        if prefix.shape[0] != len(rows):
            raise ValueError(f"{prefix.shape[0]} conditions for {len(rows)} rows")
        if state.pending is None:
            state.pending = prefix.new_zeros(state.batch_size, *prefix.shape[1:]).to(self.output.weight.dtype)
            state.pending_rows = torch.zeros(state.batch_size, dtype=torch.bool)
        assert state.pending_rows is not None
        state.pending[rows.to(state.pending.device)] = prefix.to(state.pending.dtype)
        state.pending_rows[rows] = True
        state.lengths[rows], state.fed[rows] = 0, 0
        if state.key_valid is not None:
            state.key_valid[rows.to(state.key_valid.device), : self.prefix_len] = \
                True if valid is None else valid.to(state.key_valid.device)

    def block_flops(self, context: int) -> float:
        """Forward FLOPs of one block per input (2 per multiply-add), attending over ``context`` slots."""
        hidden = self.layers[0].feed_forward.w1.out_features
        matmuls = self.dim * 3 * self.dim + self.dim * self.dim + 3 * self.dim * hidden
        return float(2 * matmuls + 4 * context * self.dim)

    def extra_repr(self) -> str:
        return f"layout={self.layout.kind}{list(self.layout.shapes)}, prefix={self.prefix_len}"


def count_parameters(module: nn.Module) -> dict[str, Any]:
    total = sum(p.numel() for p in module.parameters())
    return {"parameters": total, "parameters_m": round(total / 1e6, 2)}
