"""xAR: next-X prediction with flow matching (Ren et al. 2025, "Beyond Next-Token"; algorithms.md 4).

The latent grid of a continuous tokenizer is split into entities (:mod:`argen.nn.entities`: token, k x k
cell (the default and the paper's best), subsample, image); one autoregressive step generates one entity by
integrating a flow, and the whole transformer predicts that flow's velocity (there is no separate head, as
in the official code). The sequence is the entities concatenated (the plan's chain order); attention is
block-causal over entities (an entity sees itself bidirectionally and every earlier one), 2D RoPE follows
each position's place on the grid, listed in entity order, and every block is modulated per entity by adaLN
from ``condition + time_embed(t_entity)``: each entity carries its own noise level.

Architecture (``models/xar.py``, MAR-style): ``z_proj`` -> + ``encoder_pos_embed`` -> ``z_proj_ln`` ->
encoder blocks -> ``encoder_norm`` -> ``decoder_embed`` -> + ``decoder_pos_embed`` -> decoder blocks ->
``decoder_norm`` -> ``pred`` (the velocity, C channels). Blocks: :class:`~argen.nn.adaln_blocks.AdaLNRopeBlock`.

Timestep convention (the protocol's and the official code's, the same): t = 1 is noise, t = 0 data,
``x_t = (1 - t) x + t eps``, velocity target ``eps - x``; the time embedder reads ``long(t * 1000)``.
Training is Noisy Context Learning (:meth:`flow_loss`): every entity of every sample its own logit-normal t
and its own noise, the context noised too, MSE over all positions in one block-causal pass. At inference
the context is clean: :meth:`step` commits finished entities at t = 0 into the KV caches, and
:meth:`velocity` evaluates the queried entity against them without changing the state (it writes its keys
into the slots the entity will occupy, beyond the rows' lengths, where a commit overwrites them). The
official sampler computes the previous cell's keys in the first flow step of the next cell; with the
block-causal mask that is the same computation.

Deliberate differences: (1) text conditioning (the official model is class-only): the caption's slots form a
clean prefix every entity attends to (level -1, identity RoPE, time 0), and the adaLN vector is their masked
mean, as our VAR; (2) positional embeddings are stored in layout (raster) order, the official ones in cell
order (:mod:`argen.io.xar` permutes); (3) the official code hard-codes 16 x 16 latents, 4 cells of 64
tokens and 16 channels; here grid, entity, cell size and channels are configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from argen.core import Capabilities, Condition, DecodeState, LossOutput, StepOutput
from argen.core.state import allocate_kv
from argen.nn.adaln_blocks import AdaLNRopeBlock, level_mask
from argen.nn.attention import slot_mask
from argen.nn.blocks import RMSNorm
from argen.nn.conditioning import TimestepEmbedder, pooled_condition
from argen.nn.entities import ENTITIES, entity_layout, pyramid, upsampled_previous
from argen.nn.module import AdaLNConditioned, GeneratorModule
from argen.nn.rope import rope_2d_at
from tokenizers_vq.layout import TokenLayout


class XARGenerator(AdaLNConditioned, GeneratorModule):
    """grid_size: the latent grid (side, or [height, width]); channels: latent channels C (the tokenizer's);
    condition: partial constructor of the condition embedder (``ClassEmbedder``: null class = num_classes,
    the official 1000; or ``TextConditioner``); entity / cell_size / stride: see :mod:`argen.nn.entities`;
    dim / n_head / encoder_depth: the encoder stack; decoder_dim / decoder_n_head / decoder_depth: the
    decoder stack (default: the encoder's); mlp_ratio: SwiGLU hidden ``int(dim * mlp_ratio * 2 / 3)``;
    time_mean / time_std: the logit-normal of the training times (official: 0, 1)."""

    capabilities = Capabilities(output="velocity", rollback=True, reorder=True)

    def __init__(self, *, grid_size: int | list[int] | tuple[int, int], channels: int,
                 condition: Callable[..., nn.Module], entity: str = "cell", cell_size: int | None = None,
                 stride: int | None = None, scales: list[int] | None = None, dim: int = 768, n_head: int = 12, encoder_depth: int = 8,
                 decoder_dim: int | None = None, decoder_n_head: int | None = None, decoder_depth: int | None = None,
                 mlp_ratio: float = 4.0, norm_eps: float = 1e-6, dropout: float = 0.0, attn_dropout: float = 0.0,
                 drop_path_rate: float = 0.0, time_mean: float = 0.0, time_std: float = 1.0,
                 rope_base: float = 10000.0) -> None:
        super().__init__()
        if entity not in ENTITIES:
            raise ValueError(f"entity must be one of {', '.join(ENTITIES)}, got {entity!r}")
        h, w = (grid_size, grid_size) if isinstance(grid_size, int) else (int(grid_size[0]), int(grid_size[1]))
        dec_dim = dim if decoder_dim is None else decoder_dim
        dec_heads = n_head if decoder_n_head is None else decoder_n_head
        dec_depth = encoder_depth if decoder_depth is None else decoder_depth
        for width, heads, what in ((dim, n_head, "dim"), (dec_dim, dec_heads, "decoder_dim")):
            if width % heads or (width // heads) % 4:
                raise ValueError(f"{what} {width} over {heads} heads must give a head width divisible by 4 (2D RoPE)")
        self.grid, self.channels, self.entity_kind = (h, w), int(channels), entity
        self.cell_size = None if cell_size is None else int(cell_size)  # as configured (None: the default)
        self.dim, self.n_head, self.decoder_dim, self.decoder_n_head = dim, n_head, dec_dim, dec_heads
        self.time_mean, self.time_std = float(time_mean), float(time_std)
        self.layout, self.partition, coords = entity_layout(entity, h, w, self.channels, cell_size=cell_size,
                                                            stride=stride, scales=scales)
        self.source_layout = TokenLayout(kind="grid", shapes=((h, w),), vocab_size=None, channels=self.channels)
        self.cond_embed = condition(dim=dim)
        self.prefix_len = int(self.cond_embed.num_tokens) if self.text else 0
        self.time_embed = TimestepEmbedder(dim=dim)
        self.z_proj = nn.Linear(self.channels, dim)
        # The scale entity (FlowAR): the previous scale, upsampled, is added to the next scale's inputs.
        self.up_proj = nn.Linear(self.channels, dim) if entity == "scale" else None
        self.z_proj_ln = RMSNorm(dim, norm_eps)
        length = self.layout.length
        self.encoder_pos_embed = nn.Parameter(torch.zeros(1, length, dim))  # layout (raster) order
        rates = [drop_path_rate * i / max(encoder_depth + dec_depth - 1, 1) for i in range(encoder_depth + dec_depth)]

        def stack(width: int, heads: int, depth: int, first: int) -> nn.ModuleList:
            return nn.ModuleList(AdaLNRopeBlock(
                dim=width, cond_dim=dim, n_head=heads, ffn_hidden=int(width * mlp_ratio * 2 / 3), norm_eps=norm_eps,
                dropout=dropout, attn_dropout=attn_dropout, drop_path_rate=rates[first + i]) for i in range(depth))

        self.encoder_blocks = stack(dim, n_head, encoder_depth, 0)
        self.encoder_norm = RMSNorm(dim, norm_eps)
        self.decoder_embed = nn.Linear(dim, dec_dim)
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, length, dec_dim))
        self.decoder_blocks = stack(dec_dim, dec_heads, dec_depth, encoder_depth)
        self.decoder_norm = RMSNorm(dec_dim, norm_eps)
        self.pred = nn.Linear(dec_dim, self.channels)
        p, t = self.partition, self.prefix_len
        self.register_buffer("order", p.order, persistent=False)  # (L,) layout position per sequence index
        self.register_buffer("inverse", p.inverse(), persistent=False)  # (L,) sequence index per position
        self.register_buffer("entity", p.entity, persistent=False)  # (L,) entity per sequence index
        self.register_buffer("slot_levels", torch.cat([torch.full((t,), -1, device=p.entity.device), p.entity]), persistent=False)
        coords = coords[p.order]  # sequence order
        for name, width, heads in (("rope_enc", dim, n_head), ("rope_dec", dec_dim, dec_heads)):
            table = rope_2d_at(coords[:, 0], coords[:, 1], width // heads, base=rope_base)  # (L, hd/2, 2)
            identity = torch.zeros(t, *table.shape[1:], device=table.device)
            identity[..., 0] = 1.0  # prefix slots: the identity rotation (cos 1, sin 0)
            self.register_buffer(name, torch.cat([identity, table]), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """The official ``initialize_weights``: xavier-uniform linears with zero biases, N(0, 0.02) class table
        and positional embeddings (a text encoder keeps its own initialisation)."""
        encoder = getattr(self.cond_embed, "encoder", None)
        skip = set() if encoder is None else {id(m) for m in encoder.modules()}
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m) not in skip:
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding) and id(m) not in skip:
                nn.init.normal_(m.weight, std=0.02)
        for p in (self.encoder_pos_embed, self.decoder_pos_embed):
            nn.init.normal_(p, std=0.02)

    @property
    def scale_shapes(self) -> tuple[tuple[int, int], ...]:
        return self.layout.shapes if self.layout.kind == "scales" else ()

    def _context(self, tokens: Tensor, positions: Tensor) -> Tensor | int:
        """The scale entity's extra input at layout ``positions`` (whole scales): each scale's predecessor in
        ``tokens`` (B, L, C) (the model's own inputs: noisy in training, clean context at inference),
        upsampled and projected (B, F, D); 0 for the other entities."""
        if self.up_proj is None:
            return 0
        scales = torch.unique_consecutive(self.entity[self.inverse[positions.to(self.inverse.device)]])
        up = torch.cat([upsampled_previous(tokens, self.scale_shapes, int(k)) for k in scales], dim=1)
        return self.up_proj(up.to(self.up_proj.weight.dtype))

    @classmethod
    def sizes_from_layout(cls, layout: TokenLayout, tokenizer_config: dict[str, Any]) -> dict[str, Any]:
        """The latent grid and channels of a float latent cache (argen-train fills them in; the scale
        entity builds its pyramid from the grid)."""
        if layout.kind != "grid" or layout.channels is None:
            raise ValueError(f"xAR models continuous latents on a grid, but the code cache holds {layout.kind} "
                             f"{'codes' if layout.discrete else 'latents'}: tokenize with a continuous tokenizer "
                             f"(experiment=shapes_kl) and point codes_dir at that cache")
        h, w = layout.shapes[0]
        return {"grid_size": [h, w], "channels": layout.channels}

    # ---- conditioning -----------------------------------------------------------------------------
    @property
    def num_entities(self) -> int:
        return self.partition.count

    def plan(self, length: int | None = None) -> list[Tensor]:
        """One group per entity: its layout positions, in sequence order."""
        if length not in (None, self.layout.length):
            raise ValueError(f"xAR generates whole grids of {self.layout.length} positions, got length={length}")
        return self.partition.groups()

    # ---- the network --------------------------------------------------------------------------------
    def _run(self, h: Tensor, cond: Tensor, index: Tensor, dec_pos: Tensor, rope: tuple[Tensor, Tensor], *,
             mask: Tensor, state: DecodeState | None = None, slots: Tensor | None = None) -> Tensor:
        """Encoder inputs h (B, N, D) (positional embeddings added), adaLN rows cond (B, G, D) with index
        (N,), decoder positional terms dec_pos (B|1, N, Dd) -> velocities (B, N, C) (float32). A whole
        sequence under ``mask``, or inputs at ``slots`` (B, N) of ``state``'s caches."""
        caches = state.caches if state is not None else None
        h = self.z_proj_ln(h)
        for i, block in enumerate(self.encoder_blocks):
            h = block(h, cond, index, rope[0], mask=mask, cache=None if caches is None else caches[i], slots=slots)
        h = self.decoder_embed(self.encoder_norm(h)) + dec_pos
        depth = len(self.encoder_blocks)
        for i, block in enumerate(self.decoder_blocks):
            h = block(h, cond, index, rope[1], mask=mask, cache=None if caches is None else caches[depth + i],
                      slots=slots)
        return self.pred(self.decoder_norm(h)).float()

    def _rows(self, y: Tensor, t: Tensor) -> Tensor:
        """adaLN rows: the condition vector y (B, D) plus the embedding of t (B, G) -> (B, G, D)."""
        return y[:, None] + self.time_embed(t).to(y.dtype)

    def predict(self, x_t: Tensor, t: Tensor, cond: Condition) -> Tensor:
        """Teacher-forced velocities (B, L, C) in layout order at inputs x_t (B, L, C) (layout order) whose
        entity m is at time t[:, m] (t: (B, M)), in one block-causal pass."""
        y, prefix, valid = pooled_condition(self.cond_embed, cond)
        b, tl = x_t.shape[0], self.prefix_len
        h = self.z_proj(x_t.to(y.dtype)[:, self.order]) + self.encoder_pos_embed[:, self.order]  # (B, L, D)
        h = h + self._context(x_t, self.order)  # the scale entity: every scale's upsampled predecessor
        rows = self._rows(y, torch.cat([torch.zeros_like(t[:, :1]), t], dim=1))  # row 0: the prefix, at t = 0
        index = torch.cat([torch.zeros(tl, dtype=torch.long, device=y.device), 1 + self.entity])
        dec_pos = self.decoder_pos_embed[:, self.order]
        if prefix is not None:
            h = torch.cat([prefix, h], dim=1)
            dec_pos = torch.cat([dec_pos.new_zeros(1, tl, dec_pos.shape[-1]), dec_pos], dim=1)
        key_valid = None if valid is None else torch.cat([valid, valid.new_ones(b, self.layout.length)], dim=1)
        mask = level_mask(self.slot_levels, self.slot_levels, key_valid)
        v = self._run(h, rows, index, dec_pos, (self.rope_enc, self.rope_dec), mask=mask)[:, tl:]
        return v[:, self.inverse]

    # ---- training -----------------------------------------------------------------------------------
    def loss(self, tokens: Tensor, cond: Condition) -> LossOutput:
        """Noisy Context Learning: draws each entity's t from the logit-normal and the noise, then
        :meth:`flow_loss`. Condition dropout (the null class / caption) in training. ``tokens``: (B, L, C) of
        the layout; for the scale entity also the finest latent (B, h*w, C) (a latent cache's), whose pyramid
        of plain downsamplings is built here."""
        if self.scale_shapes and tokens.dim() == 3 and tokens.shape[1] == self.source_layout.length:
            tokens = pyramid(tokens, self.scale_shapes)  # a latent cache holds the finest scale
        self.layout.check_tokens(tokens, owner="xAR generator")
        if self.training:
            cond = cond.with_dropout(self.condition_dropout)
        b = tokens.shape[0]
        normal = torch.randn(b, self.num_entities, device=tokens.device)
        t = torch.sigmoid(normal * self.time_std + self.time_mean)  # logit-normal (the official sample_logit_normal)
        return self.flow_loss(tokens, cond, t, torch.randn_like(tokens))

    def flow_loss(self, tokens: Tensor, cond: Condition, t: Tensor, eps: Tensor) -> LossOutput:
        """tokens, eps: (B, L, C) data and noise in layout order; t: (B, M) one time per entity. Every
        position of entity m is ``(1 - t_m) x + t_m eps`` (context included: NCL), the target ``eps - x``,
        the loss the mean squared error over all positions and channels (the official ``mean_flat(...).mean()``)."""
        te = t[:, self.entity][:, self.inverse, None]  # (B, L, 1) each position's entity time, layout order
        x_t = (1 - te) * tokens + te * eps
        v = self.predict(x_t, t, cond)
        err = (v - (eps - tokens).float()).pow(2)
        loss = err.mean()
        logs = {"loss": loss.detach()}
        per_entity = err.mean(-1)[:, self.order]  # (B, L) in sequence order
        for m in sorted({0, self.num_entities - 1}):
            logs[f"loss_entity{m}"] = per_entity[:, self.entity == m].mean().detach()
        return LossOutput(loss=loss, logs=logs)

    # ---- decoding -----------------------------------------------------------------------------------
    def start(self, cond: Condition, *, max_len: int | None = None) -> DecodeState:
        """A state holding the condition; a text prefix runs through both stacks now (its slots stay)."""
        y, prefix, valid = pooled_condition(self.cond_embed, cond)
        b, tl, total = len(cond), self.prefix_len, self.prefix_len + self.layout.length
        hd, dhd = self.dim // self.n_head, self.decoder_dim // self.decoder_n_head
        caches = allocate_kv(len(self.encoder_blocks), b, self.n_head, total, hd, like=y) + \
            allocate_kv(len(self.decoder_blocks), b, self.decoder_n_head, total, dhd, like=y)
        key_valid = None if valid is None else torch.cat([valid, valid.new_ones(b, self.layout.length)], dim=1)
        extras = {"cond": y}
        if self.up_proj is not None:  # committed scales, for the next scale's upsampled context
            extras["tokens"] = self.layout.empty(b, y.device).to(y.dtype)
        state = DecodeState(caches=caches, batch_size=b, prefix_len=tl, max_len=total, key_valid=key_valid,
                            extras=extras)
        if prefix is not None:
            slots = torch.arange(tl, device=y.device).expand(b, tl)
            rows = self._rows(y, torch.zeros(b, 1, device=y.device))
            index = torch.zeros(tl, dtype=torch.long, device=y.device)
            self._run(prefix, rows, index, prefix.new_zeros(1, tl, self.decoder_dim),
                      (self.rope_enc[:tl], self.rope_dec[:tl]), mask=self._slot_mask(state, slots), state=state,
                      slots=slots)
        state.lengths = torch.full((b,), tl, dtype=torch.long)
        return state

    def _slot_mask(self, state: DecodeState, slots: Tensor) -> Tensor:
        return slot_mask(slots, state.max_len, state.key_valid, levels=self.slot_levels)

    def _whole_entities(self, seq: Tensor, fed: int, what: str) -> None:
        """``seq`` (sequence indices) must be the whole entities right after the ``fed`` ones, in order."""
        n, length = len(seq), self.layout.length
        ok = bool(torch.equal(seq.cpu(), torch.arange(fed, fed + n))) and n > 0
        ent = self.partition.entity
        ok = ok and (fed == 0 or bool(ent[fed - 1] != ent[fed])) and (fed + n == length or
                                                                    bool(ent[fed + n - 1] != ent[fed + n]))
        if not ok:
            raise ValueError(f"{what} must be whole entities in plan order right after the {fed} positions fed "
                             f"(the plan's next group(s)); got sequence indices {seq.tolist()[:8]}...")

    def step(self, state: DecodeState, tokens: Tensor, positions: Tensor, query: Tensor) -> StepOutput:
        """Commit finished entities ``tokens`` (B, F, C) at layout ``positions`` (F,) as clean context (t = 0)
        into the caches; ``query`` is the next entity (read by :meth:`velocity`); no logits."""
        positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        if positions.numel():
            self.layout.check_tokens(tokens, owner="xAR generator")
            fed = state.uniform_fed()
            seq = self.inverse[positions.to(self.inverse.device)]
            self._whole_entities(seq, fed, "the committed positions")
            b, f, y = state.batch_size, len(positions), state.extras["cond"]
            slots = (self.prefix_len + seq).expand(b, f)
            if self.up_proj is not None:
                state.extras["tokens"][:, positions] = tokens.to(y.dtype)
            h = self.z_proj(tokens.to(y.dtype)) + self.encoder_pos_embed[:, positions] + \
                self._context(state.extras.get("tokens", tokens), positions)
            rows = self._rows(y, torch.zeros(b, 1, device=y.device))
            index = torch.zeros(f, dtype=torch.long, device=y.device)
            self._run(h, rows, index, self.decoder_pos_embed[:, positions], self._rope(seq),
                      mask=self._slot_mask(state, slots), state=state, slots=slots)
            state.fed, state.lengths = state.fed + f, state.lengths + f
        return StepOutput(logits=None)

    def _rope(self, seq: Tensor) -> tuple[Tensor, Tensor]:
        return self.rope_enc[self.prefix_len + seq], self.rope_dec[self.prefix_len + seq]

    def velocity(self, state: DecodeState, x_t: Tensor, t: Tensor, query: Tensor) -> Tensor:
        """(B, Q, C) velocity of the queried entity at x_t (B, Q, C) and time t (B, Q) (one t per row: the
        entity's), given the committed entities; the state is unchanged."""
        query = torch.as_tensor(query, dtype=torch.long).reshape(-1)
        seq = self.inverse[query.to(self.inverse.device)]
        self._whole_entities(seq, state.uniform_fed(), "the queried positions")
        b, q, y = state.batch_size, len(query), state.extras["cond"]
        slots = (self.prefix_len + seq).expand(b, q)
        if bool((t == t[:, :1]).all()):  # one time per row: one adaLN row per row (the official layout)
            rows, index = self._rows(y, t[:, :1].to(y.device)), torch.zeros(q, dtype=torch.long, device=y.device)
        else:
            rows, index = self._rows(y, t.to(y.device)), torch.arange(q, device=y.device)
        h = self.z_proj(x_t.to(y.dtype)) + self.encoder_pos_embed[:, query] + \
            self._context(state.extras.get("tokens", x_t), query)
        return self._run(h, rows, index, self.decoder_pos_embed[:, query], self._rope(seq),
                         mask=self._slot_mask(state, slots), state=state, slots=slots)
