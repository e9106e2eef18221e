"""Token-Shuffle (Ma et al. 2025, algorithms.md section 6): the raster GPT over windows. Each s x s window
of the token grid is fused into one transformer position (:class:`~argen.nn.shuffle.TokenShuffle`), the
trunk predicts the next window from the windows before it, and its output is split back into the s^2
tokens of that window (:class:`~argen.nn.shuffle.TokenUnshuffle`), all read by the shared output head in
one step. The trunk sees L / s^2 positions, so attention costs about s^4 less and each AR step emits s^2
tokens; training is next-window prediction with one cross-entropy over every token.

Built on :class:`~argen.nn.gpt.PrefixGPT` (the condition prefix, LlamaGen's blocks, norm, head and init):
the slot ``prefix + w`` holds window w, and the output at slot ``prefix - 1 + w`` predicts window w (the
last condition slot predicts window 0). RoPE is 2D over the window grid.

Plan and chain: windows in raster order of the window grid, each a group of its s^2 layout positions in
row-major order; concatenated, they are the chain order (:func:`~argen.core.protocols.chain_order`) along
which speculative samplers draft and verify. Inside a window the tokens are independent given the windows
before, so the conditional of every token given all tokens earlier in the chain is the one the model
gives, and one step may feed any run of tokens consecutive in that order: complete windows enter the
trunk (one slot each), a partly fed window waits in the state until its last token comes. A query of a
token of window w reads the prediction the slot of window w - 1 made when that window was complete.

Places where the paper's text (no official code) left the choice to us:
* the residual MLP blocks and widths of the shuffle / unshuffle (see :mod:`argen.nn.shuffle`);
* tokens are ordered row-major inside a window, windows in raster order, 2D RoPE over the window grid
  (the paper's model is an MLLM with 1D positions over text and image);
* one cross-entropy averaged over every token (the paper: CE over all s^2 tokens; no z-loss here);
* the CFG schedules are :mod:`argen.samplers.guidance`'s over the plan step, that is the window index
  (every token of a window is sampled in the same step, with the same scale);
* :meth:`TokenShuffleGenerator.init_from_raster` starts from a plain raster model (the paper's first
  stage trains without shuffle); with window 1 the result is that raster model exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from argen.core import Capabilities, Condition, DecodeState, StepOutput
from argen.nn.gpt import PrefixGPT, consecutive_feed, grid_shape
from argen.nn.shuffle import TokenShuffle, TokenUnshuffle, make_identity
from argen.nn.trunk import positions_per_row
from tokenizers_vq.layout import TokenLayout

__all__ = ["TokenShuffleGenerator", "window_order"]


def window_order(height: int, width: int, window: int) -> Tensor:
    """(L,) int64: the layout position (raster order of the height x width grid) at each index of the
    chain, windows of window x window in raster order of the window grid, row-major inside each."""
    if height % window or width % window:
        raise ValueError(f"a {height}x{width} token grid does not split into {window}x{window} windows: choose "
                         f"a window dividing both sides (generator.window=...), or another tokenizer")
    gh, gw = height // window, width // window
    wy, wx, dy, dx = torch.meshgrid(torch.arange(gh), torch.arange(gw), torch.arange(window), torch.arange(window),
                                    indexing="ij")
    return ((wy * window + dy) * width + (wx * window + dx)).reshape(-1)


class TokenShuffleGenerator(PrefixGPT):
    """GPT over the s x s windows of a ``grid_size`` token grid (one side, or (height, width)).

    window: s (1 is plain raster; the paper's default 2); shuffle_blocks / shuffle_mlp_ratio: residual MLP
    blocks on each side of the trunk and their hidden width in units of ``dim``; the rest as
    :class:`~argen.generators.raster.RasterGenerator` (LlamaGen's sizes, dropouts and init).
    """

    capabilities = Capabilities(output="logits", chain=True, rollback=True, ragged=True, reorder=True)

    def __init__(self, *, vocab_size: int, dim: int, n_layer: int, n_head: int,
                 condition: Callable[..., nn.Module], grid_size: int | tuple[int, int] | list[int], window: int = 2,
                 shuffle_blocks: int = 2, shuffle_mlp_ratio: float = 1.0, multiple_of: int = 256,
                 ffn_dim_multiplier: float | None = None, norm_eps: float = 1e-5, rope_base: float = 10000.0,
                 zero_condition_rope: bool = True, token_dropout: float = 0.1, attn_dropout: float = 0.0,
                 resid_dropout: float = 0.1, ffn_dropout: float = 0.1, initializer_range: float = 0.02,
                 condition_readout: float = 0.0, readout_layer: int | None = None) -> None:
        h, w = grid_shape(grid_size)
        self.window = int(window)
        order = window_order(h, w, self.window)
        self.tokens_per_slot = self.window * self.window
        self._shuffle_args = {"blocks": int(shuffle_blocks), "mlp_ratio": float(shuffle_mlp_ratio)}
        super().__init__(vocab_size=vocab_size, dim=dim, n_layer=n_layer, n_head=n_head, condition=condition,
                         grid_size=(h, w), multiple_of=multiple_of, ffn_dim_multiplier=ffn_dim_multiplier,
                         norm_eps=norm_eps, rope_base=rope_base, zero_condition_rope=zero_condition_rope,
                         token_dropout=token_dropout, attn_dropout=attn_dropout, resid_dropout=resid_dropout,
                         ffn_dropout=ffn_dropout, initializer_range=initializer_range,
                         condition_readout=condition_readout, readout_layer=readout_layer,
                         rope_grid=(h // self.window, w // self.window))
        self.register_buffer("order", order, persistent=False)  # chain index -> layout position
        self.register_buffer("inverse", torch.argsort(order), persistent=False)  # layout position -> chain index

    def _add_heads(self) -> None:
        self.shuffle = TokenShuffle(self.dim, self.window, **self._shuffle_args)
        self.unshuffle = TokenUnshuffle(self.dim, self.window, **self._shuffle_args)

    @property
    def num_windows(self) -> int:
        return self.seq_len // self.tokens_per_slot

    @classmethod
    def sizes_from_layout(cls, layout: TokenLayout, tokenizer_config: dict[str, Any]) -> dict[str, Any]:
        """The vocabulary and token grid of a code cache (argen-train fills them in); grids only."""
        if layout.kind != "grid":
            raise ValueError(f"Token-Shuffle fuses s x s windows of a 2D token grid; the code cache holds "
                             f"{layout.kind} tokens (shapes {[list(s) for s in layout.shapes]}): use a 2D VQ "
                             f"tokenizer's codes, or generator=raster_nano")
        h, w = layout.shapes[0]
        return {"vocab_size": layout.vocab_size, "grid_size": h if h == w else [h, w]}

    @torch.no_grad()
    def init_from_raster(self, state_dict: dict[str, Tensor]) -> list[str]:
        """Load the shared weights of a raster generator's state dict (condition, token embedding, blocks,
        norm, head, condition readout: the same names); with window 1, also set the shuffle and unshuffle to
        the identity, so that this generator is that raster model exactly. Returns the keys left at their
        init (the shuffle's, for window > 1: the paper's later stages start from a model without shuffle)."""
        own = self.state_dict()
        unknown = [k for k in state_dict if k not in own]
        if unknown:
            raise KeyError(f"not a raster generator of this size: unknown keys {unknown[:5]}")
        missing = self.load_state_dict(state_dict, strict=False).missing_keys
        if self.window == 1:
            make_identity(self.shuffle, self.unshuffle)
            return []
        return sorted(missing)

    # ---- training ---------------------------------------------------------------------------
    def _windows(self, tokens: Tensor) -> Tensor:
        """Layout-order tokens (B, L) -> the fused inputs (B, W, C) of every window."""
        chain = tokens[:, self.order.to(tokens.device)]
        return self.shuffle(self.tok_embeddings(chain.unflatten(1, (self.num_windows, self.tokens_per_slot))))

    def _to_layout(self, per_window: Tensor) -> Tensor:
        """(B, W, s^2, ...) in chain order -> (B, L, ...) in layout order."""
        return per_window.flatten(1, 2)[:, self.inverse.to(per_window.device)]

    def _trunk(self, tokens: Tensor, cond: Condition, split: int | None = None) -> tuple[Tensor, Tensor | None]:
        """Final features (B, W, C) (entry w predicts window w) and, with ``split``, the output of the first
        ``split`` blocks at the same slots."""
        if tokens.shape[1] != self.seq_len:
            raise ValueError(f"expected {self.seq_len} tokens per image (a {self.layout.shapes[0]} grid), "
                             f"got {tokens.shape[1]}")
        self.check_tokens(tokens)
        prefix, valid = self.embed_condition(cond)
        windows = self._windows(tokens)[:, :-1]  # the last window is never an input
        h = self.tok_dropout(torch.cat([prefix, windows], dim=1))
        key_valid = None if valid is None else torch.cat([valid, valid.new_ones(windows.shape[:2])], dim=1)
        return self.trunk(h, key_valid, split)

    def _head(self, features: Tensor) -> Tensor:
        """(B, W, C) trunk features -> logits (B, L, V) in layout order."""
        return self._to_layout(self.output(self.unshuffle(features)).float())

    def logits(self, tokens: Tensor, cond: Condition) -> Tensor:
        """Teacher-forced logits (B, L, V) of every position, in layout order, from one causal pass over
        the windows."""
        return self._head(self._trunk(tokens, cond)[0])

    def readout_features_and_logits(self, tokens: Tensor, cond: Condition) -> tuple[Tensor, Tensor]:
        """The condition readout's input, one per window (B, W, C) (the final features, or the
        layer-normalised output of the first ``readout_layer`` blocks), and the teacher-forced logits."""
        final, mid = self._trunk(tokens, cond, self.readout_layer)
        return self.readout_input(final, mid), self._head(final)

    # ---- inference --------------------------------------------------------------------------
    def plan(self, length: int | None = None) -> list[Tensor]:
        """One window per step: its s^2 layout positions, row-major; windows in raster order."""
        if length is not None and int(length) != self.seq_len:
            raise ValueError(f"plan length {length} is not available: a {self.layout.shapes[0]} grid needs all "
                             f"{self.seq_len} positions")
        return list(self.order.cpu().split(self.tokens_per_slot))

    def start(self, cond: Condition, *, max_len: int | None = None) -> DecodeState:
        """PrefixGPT's state (one slot per window) with two buffers: ``tokens``, the fed tokens (B, L) in
        chain order (a partly fed window waits there), and ``windows`` (B, W, s^2, C / s^2), the unshuffled
        prediction of each window, written when the window before it is complete."""
        state = super().start(cond, max_len=max_len)
        param = self.output.weight
        b, t = state.batch_size, self.tokens_per_slot
        state.extras["tokens"] = torch.zeros(b, self.seq_len, dtype=torch.long, device=param.device)
        state.extras["windows"] = torch.zeros(b, self.num_windows, t, self.dim // t, dtype=param.dtype,
                                              device=param.device)
        return state

    def step(self, state: DecodeState, tokens: Tensor, positions: Tensor, query: Tensor) -> StepOutput:
        """Feed ``tokens`` (B, F) at layout ``positions`` ((F,), or (B, F) per row with -1 after a row's
        last), consecutive in the chain order from each row's ``state.fed``; return logits (B, Q, V) for
        the layout positions ``query`` ((Q,) or (B, Q), -1: nothing asked). A query of a token in window
        w needs every window before w fed (by now or in this step); every complete window runs through the
        trunk once."""
        b, f = tokens.shape
        pos, qry = positions_per_row(positions, b, "positions"), positions_per_row(query, b, "query")
        length, t = self.seq_len, self.tokens_per_slot
        for name, x in (("positions", pos), ("query positions", qry)):
            if bool((x >= length).any()):
                raise ValueError(f"{name} {x.max().item()} go past the last position {length - 1}")
        inverse = self.inverse.cpu()
        chain = torch.where(pos >= 0, inverse[pos.clamp_min(0)], -1)
        counts = consecutive_feed(state.fed, chain, length, order="token-shuffle (window by window)")
        fed = state.fed + counts
        qchain = torch.where(qry >= 0, inverse[qry.clamp_min(0)], -1)
        qwin = qchain.div(t, rounding_mode="floor")
        ready = (qchain < 0) | (qwin * t <= fed[:, None])
        if not bool(ready.all()):  # checked before anything runs, so a bad call leaves the state untouched
            row = int((~ready).any(1).nonzero()[0])
            raise ValueError(f"query positions {qry[row].tolist()} of row {row} need the windows before theirs: the "
                             f"row will have fed {int(fed[row])} tokens of the window-by-window order "
                             f"({t} per window), so it can ask for windows up to {int(fed[row]) // t}")
        device = state.extras["tokens"].device
        buffer, table = state.extras["tokens"], state.extras["windows"]
        if f:
            inside = torch.arange(f)[None] < counts[:, None]
            if tokens.device.type == "cpu":
                self.check_tokens(tokens[inside])
            rows = torch.arange(b)[:, None].expand(-1, f)
            buffer[rows[inside].to(device), chain[inside].to(device)] = tokens.to(device)[inside.to(device)]
        first = state.fed // t
        complete = fed // t - first  # windows that become complete in this step, per row
        n = int(complete.max()) if b else 0
        x = None
        if n:
            ids = (first[:, None] + torch.arange(n)[None]).clamp_max(self.num_windows - 1)  # (B, n)
            index = (ids[..., None] * t + torch.arange(t)).flatten(1).to(device)
            x = self.shuffle(self.tok_embeddings(buffer.gather(1, index).unflatten(1, (n, t))))  # (B, n, C)
        pending = bool(state.is_pending().any())
        if f and not (n or pending):  # the fed tokens only wait for the rest of their window
            h, slots = self.output.weight.new_zeros(b, 0, self.dim), torch.zeros(b, 0, dtype=torch.long)
        else:  # advance() refuses a step with nothing at all
            h, slots = self.advance(state, x, complete)  # (B, p + n, C): p = prefix when a condition ran
        state.fed = fed
        # the output at slot prefix - 1 + w predicts window w: keep what this step predicted
        predicts = slots - (self.prefix_len - 1)
        keep = (slots >= self.prefix_len - 1) & (predicts < self.num_windows)
        if bool(keep.any()):
            rows = torch.arange(b)[:, None].expand_as(slots)
            table[rows[keep].to(device), predicts[keep].to(device)] = \
                self.unshuffle.split(h[keep.to(h.device)]).to(table.dtype)
        brow = torch.arange(b, device=device)[:, None]
        chunks = table[brow, qwin.clamp_min(0).to(device), (qchain.clamp_min(0) % t).to(device)]  # (B, Q, C / t)
        hidden = self.unshuffle.expand(chunks)
        return StepOutput(logits=self.output(hidden).float(), hidden=hidden)

    def flops_per_token(self, context: int | None = None) -> float:
        """Forward FLOPs per generated token (2 per multiply-add): a window's trunk pass (attention over
        ``context`` slots, default half the slots), shuffle and unshuffle, shared by its s^2 tokens, plus
        the head of each token."""
        ctx = (self.prefix_len + self.num_windows) // 2 if context is None else context
        window = self.n_layer * self.block_flops(ctx) + self.shuffle.flops() + self.unshuffle.flops()
        return float(window / self.tokens_per_slot + 2 * self.dim * self.vocab_size)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}, trunk positions={self.num_windows}"
