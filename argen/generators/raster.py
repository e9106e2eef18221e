"""Raster next-token generator: a LlamaGen-style GPT (algorithms.md section 2).

The condition (one class token, or the caption's slots) is a prefix; token i of the raster
order sits at slot ``prefix + i`` and the output at slot ``prefix + i - 1`` predicts it (the
last prefix slot predicts token 0). Parameter names follow LlamaGen's ``Transformer`` so an
official checkpoint maps by the documented conversion in :mod:`argen.io.llamagen`:
``cls_embedding`` (``embedding_table`` | ``cap_proj.fc1/fc2`` + ``uncond_embedding``),
``tok_embeddings``, ``layers.{i}.attention.{wqkv,wo}``, ``layers.{i}.feed_forward.{w1,w2,w3}``,
``layers.{i}.{attention_norm,ffn_norm}``, ``norm``, ``output``.

Deliberate differences from LlamaGen: dropout of the condition happens in :meth:`loss` through
:meth:`Condition.with_dropout` rather than inside the embedder; the KV cache lives in a
:class:`DecodeState` the caller holds instead of in the attention modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from argen.core import Capabilities, Condition, DecodeState, StepOutput
from argen.nn.gpt import PrefixGPT, consecutive_feed, count_parameters, raster_layout
from argen.nn.trunk import find_inputs, positions_per_row
from tokenizers_vq.layout import TokenLayout

__all__ = ["RasterGenerator", "count_parameters", "raster_layout"]


class RasterGenerator(PrefixGPT):
    """GPT over a raster grid (``grid_size`` x ``grid_size``, 2D RoPE) or a 1D sequence
    (``sequence_length``, 1D RoPE).

    condition: a partial constructor of the condition embedder, called with ``dim`` (Hydra
    ``_partial_: true``): :class:`~argen.nn.conditioning.ClassEmbedder` or
    :class:`~argen.nn.conditioning.TextConditioner`. Dropouts and init follow LlamaGen
    (token/resid/ffn 0.1, attention 0, N(0, 0.02), zero-initialised output head).
    """

    capabilities = Capabilities(output="logits", chain=True, rollback=True, ragged=True, reorder=True, features=True)

    def __init__(self, *, vocab_size: int, dim: int, n_layer: int, n_head: int,
                 condition: Callable[..., nn.Module], grid_size: int | None = None,
                 sequence_length: int | None = None, multiple_of: int = 256, ffn_dim_multiplier: float | None = None,
                 norm_eps: float = 1e-5, rope_base: float = 10000.0, zero_condition_rope: bool = True,
                 token_dropout: float = 0.1, attn_dropout: float = 0.0, resid_dropout: float = 0.1,
                 ffn_dropout: float = 0.1, initializer_range: float = 0.02, condition_readout: float = 0.0,
                 readout_layer: int | None = None) -> None:
        super().__init__(vocab_size=vocab_size, dim=dim, n_layer=n_layer, n_head=n_head, condition=condition,
                         grid_size=grid_size, sequence_length=sequence_length, multiple_of=multiple_of,
                         ffn_dim_multiplier=ffn_dim_multiplier, norm_eps=norm_eps, rope_base=rope_base,
                         zero_condition_rope=zero_condition_rope, token_dropout=token_dropout,
                         attn_dropout=attn_dropout, resid_dropout=resid_dropout, ffn_dropout=ffn_dropout,
                         initializer_range=initializer_range, condition_readout=condition_readout,
                         readout_layer=readout_layer)

    @classmethod
    def sizes_from_layout(cls, layout: TokenLayout, tokenizer_config: dict[str, Any]) -> dict[str, Any]:
        """The constructor arguments a token layout fixes (argen-train fills them from the code cache):
        the vocabulary and the square grid, or the 1D sequence length."""
        h, w = layout.shapes[0]
        if layout.kind == "grid":
            if h != w:
                raise ValueError(f"the raster generator needs a square token grid, the cache has {h}x{w}")
            return {"vocab_size": layout.vocab_size, "grid_size": h}
        if layout.kind == "sequence":
            return {"vocab_size": layout.vocab_size, "sequence_length": w}
        raise ValueError(f"the code cache holds {'scale-residual' if layout.kind == 'scales' else layout.kind} "
                         f"tokens (shapes {[list(s) for s in layout.shapes]}): train a next-scale generator on it "
                         f"(generator=var_nano), not {cls.__name__}")

    # ---- training ---------------------------------------------------------------------------
    def logits(self, tokens: Tensor, cond: Condition) -> Tensor:
        """Teacher-forced logits (B, L, V) for every position in one causal pass."""
        return self.output(self.features(tokens, cond)).float()

    def readout_features_and_logits(self, tokens: Tensor, cond: Condition) -> tuple[Tensor, Tensor]:
        """What the condition readout reads (B, L, C) (the final features, or the layer-normalised output of
        the first ``readout_layer`` blocks) and the teacher-forced logits, from one pass."""
        final, mid = self._trunk(tokens, cond, self.readout_layer)
        return self.readout_input(final, mid), self.output(final).float()

    def features(self, tokens: Tensor, cond: Condition) -> Tensor:
        """Teacher-forced final features (B, L, C) (after the last norm, what ``output`` reads):
        feature i predicts token i. The same features :meth:`step` returns as ``hidden``."""
        return self._trunk(tokens, cond)[0]

    def _trunk(self, tokens: Tensor, cond: Condition, split: int | None = None) -> tuple[Tensor, Tensor | None]:
        """Final features (B, L, C) and, with ``split``, the output of the first ``split`` blocks (B, L, C)."""
        length = tokens.shape[1]
        if length != self.seq_len:
            raise ValueError(f"expected {self.seq_len} tokens per image ({self.layout.kind} {self.layout.shapes}), "
                             f"got {length}")
        self.check_tokens(tokens)
        h, key_valid = self.prefixed(tokens[:, :-1], cond)  # (B, T + L - 1, C)
        return self.trunk(h, key_valid, split)

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """Token embeddings (B, F, C) (:class:`~argen.core.protocols.FeatureTarget`)."""
        return self.tok_embeddings(tokens)

    def head(self, features: Tensor) -> Tensor:
        """Logits (B, F, V), float32, from final features (:class:`~argen.core.protocols.FeatureTarget`)."""
        return self.output(features).float()

    # ---- inference --------------------------------------------------------------------------
    def plan(self, length: int | None = None) -> list[Tensor]:
        """One raster position per step; ``length``: stop after that many (1D sequences only: a grid
        needs all its tokens to decode)."""
        n = self.seq_len if length is None else int(length)
        if not 1 <= n <= self.seq_len or (n != self.seq_len and self.layout.kind == "grid"):
            raise ValueError(f"plan length {length} is not available for a {self.layout.kind} layout of "
                             f"{self.seq_len} positions (1D sequences take 1..{self.seq_len}; grids all of them)")
        return [torch.tensor([i]) for i in range(n)]

    def step(self, state: DecodeState, tokens: Tensor, positions: Tensor, query: Tensor) -> StepOutput:
        """Feed ``tokens`` (B, F) at layout ``positions`` ((F,) for every row, or (B, F) per row, -1 where a
        row feeds fewer), each row continuing from its ``state.fed``; return logits (B, Q, V) for ``query``
        ((Q,) or (B, Q), -1: nothing asked, garbage returned). Query t must be predicted by a slot of this
        step: the slot of position t - 1, or the last condition slot for t = 0 (a row whose condition
        runs in this step)."""
        b, f = tokens.shape
        pos, qry = positions_per_row(positions, b, "positions"), positions_per_row(query, b, "query")
        counts = consecutive_feed(state.fed, pos, self.seq_len, order="raster")
        if bool((qry >= self.seq_len).any()):
            raise ValueError(f"query positions {qry.max().item()} go past the last position {self.seq_len - 1}")
        slots, _ = self.step_slots(state, counts, f)  # what advance() will give: [condition | tokens]
        index, found = find_inputs(slots, torch.where(qry < 0, -1, qry + self.prefix_len - 1))  # (B, Q)
        if not bool(found.all()):  # checked before anything runs, so a bad call leaves the state untouched
            row = int((~found).any(1).nonzero()[0])
            raise ValueError(f"query positions {qry[row].tolist()} of row {row} are not predicted by the slots of "
                             f"this step (query t comes from position t - 1, or from the condition for t = 0; "
                             f"the row has fed {int(state.fed[row])} positions and feeds {int(counts[row])} now)")
        x = None
        if f:
            inside = torch.arange(f)[None] < counts[:, None]
            if tokens.device.type == "cpu":  # on GPUs the check would sync every step; the lookup asserts anyway
                self.check_tokens(tokens[inside])
            x = self.tok_embeddings(torch.where(inside.to(tokens.device), tokens, 0))
        h, _ = self.advance(state, x, counts)  # (B, t + f, C)
        state.fed = state.fed + counts
        hidden = h[torch.arange(b, device=h.device)[:, None], index.clamp_min(0).to(h.device)]  # (B, Q, C)
        return StepOutput(logits=self.output(hidden).float(), hidden=hidden)

    def flops_per_token(self, context: int | None = None) -> float:
        """Forward FLOPs per generated token (2 per multiply-add): the matmuls of every layer plus the
        head, and attention over ``context`` cached slots (default: half the sequence)."""
        ctx = (self.prefix_len + self.seq_len) // 2 if context is None else context
        return float(self.n_layer * self.block_flops(ctx) + 2 * self.dim * self.vocab_size)
