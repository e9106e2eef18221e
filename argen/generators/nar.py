"""NAR: next-neighbour generation (He et al. 2025, arXiv 2503.10696; algorithms.md section 3), a
configuration of the shared prefix GPT (:class:`~argen.nn.gpt.PrefixGPT`).

* **Order.** The n x n grid is generated one anti-diagonal d = r + c per step, 2n - 1 steps, the
  tokens of a diagonal in parallel. Tokens stay at their raster positions: position p = r * n + c sits
  at slot ``prefix + p`` in the KV cache and rotates with its own (r, c) in the 2D RoPE.
* **Proximity mask.** Image token i sees image token j iff r_j + c_j <= r_i + c_i (its own diagonal
  included) and every condition slot; condition slots are causal among themselves and see no image
  token. Here that is :func:`~argen.nn.attention.slot_mask` with slot levels r + c for image slots and
  s - prefix for condition slot s, so training (one masked pass) and decoding (a masked step over the
  cache) use one definition.
* **Dimension-oriented heads.** Head R: the ``n_layer`` trunk blocks, ``norm``, ``output``; the
  output at (r, c) predicts its right neighbour (r, c + 1). Head B: ``medusa_layers`` more blocks
  (``layers.{n_layer}`` ...) continue from the trunk's output (before ``norm``), then ``medusa_norm``
  and ``medusa_output``; the output at (r, c) predicts the token below, (r + 1, c).
* **Mixed logits** of a target (r, c), as the official model assembles them: (0, 0) the mean of both
  heads at the last condition slot; first row R(r, c - 1); first column B(r - 1, c); otherwise the mean
  (R(r, c - 1) + B(r - 1, c)) / 2 of the float32 logits. Training is one cross-entropy over them; the
  teacher-forced input is the condition and all n^2 tokens (the last token's outputs are unused).

Names follow the official ``Transformer`` (LlamaGen's keys plus ``layers.{n_layer}``, ``medusa_norm``,
``medusa_output``), so :mod:`argen.io.nar` converts checkpoints by a near-identity table.

Deliberate differences from the official code: condition dropout happens in :meth:`loss` through
:meth:`Condition.with_dropout` (as for raster); the KV cache lives in the caller's
:class:`~argen.core.DecodeState`; a null caption's slots are all valid (argen's TextConditioner, shared
with raster) where the official sampler reuses the prompt's padding mask for the unconditional half;
one diagonal's positions may be queried in any subset and order (the official loop always takes the
whole diagonal in ascending rows).

Capabilities: logits and ``reorder`` only. The plan is not a singleton chain and rows cannot be rolled
back to a prefix of fed positions (a diagonal is one unit), so Jacobi / LANTERN / drafter speculative
decoding, which verify windows of a chain, are refused when built; rows advance together (no ragged
steps or per-row restarts).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from argen.core import Capabilities, Condition, DecodeState, IncompatibleError, StepOutput
from argen.nn.attention import slot_mask
from argen.nn.blocks import RMSNorm
from argen.core.state import round_up
from argen.nn.gpt import PrefixGPT
from argen.nn.trunk import find_inputs, positions_per_row, row_slots, run_layers
from tokenizers_vq.layout import TokenLayout

FAR = 1 << 30  # the level of slots beyond the sequence (cache rounding, scratch): never visible


def anti_diagonals(n: int) -> list[Tensor]:
    """The 2n - 1 anti-diagonals of an n x n grid as raster positions, each in ascending rows."""
    return [torch.tensor([r * n + (d - r) for r in range(max(0, d - n + 1), min(d, n - 1) + 1)])
            for d in range(2 * n - 1)]


def proximity_levels(prefix: int, n: int, total: int | None = None) -> Tensor:
    """Slot levels (total,) of the proximity order: condition slot s -> s - prefix, position (r, c) at
    slot prefix + r n + c -> r + c, slots past the grid -> a level no query reaches."""
    pos = torch.arange(n * n)
    levels = torch.cat([torch.arange(prefix) - prefix, pos // n + pos % n])
    if total is not None and total > len(levels):
        levels = torch.cat([levels, torch.full((total - len(levels),), FAR)])
    return levels


class NARGenerator(PrefixGPT):
    """Next-neighbour generator over a ``grid_size`` x ``grid_size`` grid; arguments as
    :class:`~argen.generators.raster.RasterGenerator` (the shared :class:`~argen.nn.gpt.PrefixGPT`), plus
    ``medusa_layers``: the blocks of head B after the trunk (the official ``medusa_attention_num``, 1)."""

    capabilities = Capabilities(output="logits", reorder=True)

    def __init__(self, *, medusa_layers: int = 1, grid_size: int | None = None, **kwargs: Any) -> None:
        if grid_size is None or kwargs.get("sequence_length") is not None:
            raise ValueError("NAR generates a square token grid: give grid_size (a 1D token sequence has no "
                             "neighbours below; use generator=raster_* for it)")
        if medusa_layers < 1:
            raise ValueError(f"medusa_layers must be >= 1 (head B continues through its own blocks), got "
                             f"{medusa_layers}")
        self.medusa_layers = int(medusa_layers)
        super().__init__(grid_size=grid_size, extra_blocks=medusa_layers, **kwargs)
        self.grid_size = int(grid_size)
        # every slot of the KV cache start() allocates (its rounding slots at a level no query reaches)
        slots = round_up(self.prefix_len + self.seq_len, 8)
        self.register_buffer("levels", proximity_levels(self.prefix_len, self.grid_size, slots), persistent=False)
        self._diagonals = anti_diagonals(self.grid_size)

    def _add_heads(self) -> None:
        self.medusa_norm = RMSNorm(self.dim, self.norm_eps)
        self.medusa_output = nn.Linear(self.dim, self.vocab_size, bias=False)

    @classmethod
    def sizes_from_layout(cls, layout: TokenLayout, tokenizer_config: dict[str, Any]) -> dict[str, Any]:
        """The vocabulary and the square grid of a code cache (argen-train fills them in)."""
        h, w = layout.shapes[0]
        if layout.kind != "grid" or h != w:
            raise ValueError(f"NAR needs a square token grid; the code cache holds {layout.kind} tokens of shapes "
                             f"{[list(s) for s in layout.shapes]} (a VAR cache trains generator=var_*, a 1D one "
                             f"generator=raster_*)")
        return {"vocab_size": layout.vocab_size, "grid_size": h}

    # ---- the two heads ------------------------------------------------------------------------
    def _heads(self, h: Tensor, rope: Tensor, state: DecodeState | None = None, slots: Tensor | None = None, *,
               mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Final features of head R (after ``norm``) and head B (after the extra blocks and
        ``medusa_norm``), both (B, N, C), for inputs ``h`` run through every block: a whole sequence under
        ``mask``, or a step at ``slots`` of ``state`` in the proximity order."""
        run = dict(mask=mask, levels=self.levels)
        trunk = run_layers(self.layers[: self.n_layer], h, rope, state, slots, **run)
        below = run_layers(self.layers[self.n_layer:], trunk, rope, state, slots, first=self.n_layer, **run)
        return self.norm(trunk), self.medusa_norm(below)

    def mixed_logits(self, right: Tensor, below: Tensor, from_right: Tensor, from_below: Tensor) -> Tensor:
        """Logits (B, Q, V) of Q targets from head-R features ``right`` and head-B features ``below``
        (B, N, C): target q reads R at input ``from_right[b, q]`` and B at ``from_below[b, q]`` (-1: that
        head does not predict it), the mean of both float32 logits where both do."""
        b = right.shape[0]
        rows = torch.arange(b, device=right.device)[:, None]
        lr = self.output(right[rows, from_right.clamp_min(0).to(right.device)]).float()
        lb = self.medusa_output(below[rows, from_below.clamp_min(0).to(below.device)]).float()
        has_r, has_b = (from_right >= 0).to(lr.device)[..., None], (from_below >= 0).to(lr.device)[..., None]
        return torch.where(has_r & has_b, (lr + lb) / 2, torch.where(has_r, lr, lb))

    def source_slots(self, targets: Tensor) -> tuple[Tensor, Tensor]:
        """For target positions (...,) (-1: none): the slot whose head R predicts each (that of (r, c - 1);
        -1 in the first column) and the slot whose head B does ((r - 1, c); -1 in the first row); both are
        the last condition slot for (0, 0). Position p sits at slot prefix + p."""
        n, last = self.grid_size, self.prefix_len - 1
        r, c = targets // n, targets % n
        right = torch.where(c > 0, targets - 1 + self.prefix_len, -1)
        below = torch.where(r > 0, targets - n + self.prefix_len, -1)
        origin, none = targets == 0, targets < 0
        return (torch.where(origin, last, torch.where(none, -1, right)),
                torch.where(origin, last, torch.where(none, -1, below)))

    # ---- training ---------------------------------------------------------------------------
    def attention_mask(self, key_valid: Tensor | None = None) -> Tensor:
        """The bool mask (B|1, 1, S, S) of the teacher-forced pass over the condition and all L tokens
        (S = prefix + L): the proximity order of :func:`proximity_levels` (``key_valid`` (B, S): padded
        condition slots hidden, each slot still seeing itself). Decoding steps use the same rule."""
        n = self.prefix_len + self.seq_len
        return slot_mask(torch.arange(n, device=self.levels.device)[None], n, key_valid, self.levels[:n])

    def logits(self, tokens: Tensor, cond: Condition) -> Tensor:
        """Teacher-forced mixed logits (B, L, V) for every position in one masked pass over the condition
        and all L tokens."""
        b, length = tokens.shape
        if length != self.seq_len:
            raise ValueError(f"expected {self.seq_len} tokens per image ({self.grid_size}x{self.grid_size}), "
                             f"got {length}")
        self.check_tokens(tokens)
        h, key_valid = self.prefixed(tokens, cond)  # (B, T + L, C): input i sits at slot i
        right, below = self._heads(h, self.rope, mask=self.attention_mask(key_valid))
        src_r, src_b = self.source_slots(torch.arange(length, device=self.levels.device))
        return self.mixed_logits(right, below, src_r[None].expand(b, -1), src_b[None].expand(b, -1))

    # ---- inference --------------------------------------------------------------------------
    def plan(self, length: int | None = None) -> list[Tensor]:
        """The 2n - 1 anti-diagonals in raster positions, each in ascending rows (the official order)."""
        if length is not None and int(length) != self.seq_len:
            raise ValueError(f"plan length {length}: NAR decodes the whole {self.grid_size}x{self.grid_size} grid "
                             f"({self.seq_len} positions)")
        return [d.clone() for d in self._diagonals]

    def start(self, cond: Condition, *, max_len: int | None = None) -> DecodeState:
        """The shared allocation (prefix + L slots, rounded up to 8), whose slots ``levels`` orders."""
        if max_len is not None and int(max_len) != self.seq_len:
            raise ValueError(f"NAR keeps every position at its own slot: max_len is the grid's {self.seq_len}")
        state = super().start(cond)
        state.extras["diagonals"] = 0  # anti-diagonals fed so far
        return state

    def restart(self, state: DecodeState, rows: Tensor, cond: Condition) -> None:
        raise IncompatibleError("NAR rows advance together (Capabilities.ragged is False): start a new state "
                                  "for new conditions instead of restarting rows")

    def _check_step(self, state: DecodeState, pos: Tensor, qry: Tensor) -> int:
        """The diagonal the queries must lie on, after checking the feed is the next whole diagonal."""
        if bool((pos != pos[:1]).any()) or bool((qry != qry[:1]).any()):
            raise ValueError("NAR rows advance together: give the same positions and queries for every row "
                             "((F,) and (Q,))")
        fed, want = pos[0], qry[0]
        pending = state.is_pending()
        done = int(state.extras.get("diagonals", 0))
        plan = self._diagonals
        if bool(pending.any()):
            if not bool(pending.all()) or fed.numel():
                raise ValueError("NAR's first step runs the condition alone: feed no tokens (F = 0) and query "
                                 "position 0")
            target = 0
        else:
            if done >= len(plan):
                raise ValueError(f"all {len(plan)} anti-diagonals were fed already")
            expected = plan[done]
            if fed.numel() != expected.numel() or not torch.equal(fed.sort().values, expected):
                raise ValueError(f"NAR feeds one whole anti-diagonal per step, in order: step {done + 1} feeds "
                                 f"diagonal {done} = positions {expected.tolist()}, got {fed.tolist()}")
            target = done + 1
        bad = want[(want >= 0) & ((want // self.grid_size + want % self.grid_size) != target)]
        if bad.numel() or bool((want >= self.seq_len).any()):
            raise ValueError(f"queries {want.tolist()} are not on anti-diagonal {target}, the one this step "
                             f"predicts (each position is predicted from its left and upper neighbours)")
        return target

    def step(self, state: DecodeState, tokens: Tensor, positions: Tensor, query: Tensor) -> StepOutput:
        """Feed the tokens (B, F) of the next anti-diagonal at their raster ``positions`` (nothing on the
        first step, which runs the condition) and return the mixed logits (B, Q, V) of ``query``, positions
        of the following diagonal (-1: nothing asked)."""
        b, f = tokens.shape
        pos, qry = positions_per_row(positions, b, "positions"), positions_per_row(query, b, "query")
        self._check_step(state, pos, qry)
        t = self.prefix_len if bool(state.is_pending().any()) else 0
        cond_slots = row_slots(torch.zeros(b, dtype=torch.long), torch.full((b,), t), t)
        slots = torch.cat([cond_slots, torch.where(pos < 0, -1, pos + self.prefix_len)], dim=1)  # (B, t + F)
        parts = [state.pending] if t else []
        if f:
            if tokens.device.type == "cpu":
                self.check_tokens(tokens)
            parts.append(self.tok_embeddings(tokens))
        h = torch.cat(parts, dim=1)
        right, below = self._heads(h, self.rope[slots.clamp_min(0).to(self.rope.device)], state, slots)
        src_r, src_b = self.source_slots(qry)  # -1 where a head does not predict the query (or no query)
        (idx_r, ok_r), (idx_b, ok_b) = find_inputs(slots, src_r), find_inputs(slots, src_b)
        assert bool(ok_r.all()) and bool(ok_b.all())  # _check_step: the sources are this step's inputs
        idx_b = torch.where((idx_r < 0) & (idx_b < 0), 0, idx_b)  # a padded query: garbage from input 0
        state.lengths = state.lengths + t + (pos >= 0).sum(1)
        state.fed = state.fed + (pos >= 0).sum(1)
        if t:
            state.pending_rows = None
            state.pending = None
        else:
            state.extras["diagonals"] = int(state.extras.get("diagonals", 0)) + 1
        return StepOutput(logits=self.mixed_logits(right, below, idx_r, idx_b), hidden=None)

    def flops_per_token(self, context: int | None = None) -> float:
        """Forward FLOPs per generated token: every block (trunk and head B), both heads, attention over
        ``context`` slots (default: half the sequence)."""
        ctx = (self.prefix_len + self.seq_len) // 2 if context is None else context
        return float(len(self.layers) * self.block_flops(ctx) + 4 * self.dim * self.vocab_size)
