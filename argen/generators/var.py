"""VAR next-scale generator (Tian et al. 2024; algorithms.md sections 1.3-1.4).

Each step predicts a whole scale of the scale-residual token pyramid. Slot layout: the optional
text prefix (T slots), then one slot per layout position; the slots of scale k hold the inputs
that predict scale k (VAR's teacher forcing): the start token(s) for scale 0, and for k > 0
``word_embed(area_down(f_hat_{<k}, pn_k))``, where f_hat accumulates the scales fed so far. Every
slot adds ``lvl_embed(k) + pos_1LC``. Attention is block-causal across scales (a slot sees its
own scale and all coarser ones; the prefix is the coarsest block), so one masked pass trains all
scales and inference runs scale by scale over the KV cache.

The accumulate step belongs to the tokenizer (:class:`~tokenizers_vq.msvq.MultiScaleQuantizer`):
it is handed over explicitly with :meth:`VARGenerator.attach_tokenizer`, kept outside the state
dict (exports hold only the transformer), and the same code builds the teacher-forcing inputs
(:meth:`loss`) and the next-scale inputs at inference (:meth:`step`).

Parameter names follow VAR's ``models/var.py`` (``word_embed``, ``pos_start``, ``pos_1LC``,
``lvl_embed``, ``blocks.{i}``, ``head_nm``, ``head``) except the condition table: VAR's
``class_emb`` is ``cond_embed.embedding_table`` here (:mod:`argen.io.var` converts).

Deliberate differences from VAR: (1) text conditioning (VAR is class-only): the caption's slots
form the prefix every scale attends to, and the adaLN condition vector is their masked mean;
the start token is that vector plus ``pos_start``, as for a class. (2) Condition dropout is
applied in :meth:`loss` through :meth:`Condition.with_dropout`. (3) CFG uses the shared
:class:`~argen.samplers.guidance.Guidance`: VAR's ramp ``(1 + t) l_c - t l_u`` with
``t = cfg k / (K - 1)`` is ``cfg_schedule=linear`` with ``cfg_scale = 1 + cfg`` (VAR's README
FID setting cfg=1.5 is ``cfg_scale=2.5``; argen/configs/sampler/var.yaml).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.core import Capabilities, Condition, DecodeState, LossOutput, StepOutput
from argen.core.state import allocate_kv, round_up
from argen.nn.adaln import AdaLayerNorm
from argen.nn.adaln_blocks import AdaLNSelfAttnBlock, level_mask
from argen.nn.conditioning import pooled_condition
from argen.nn.module import AdaLNConditioned, GeneratorModule
from tokenizers_vq.layout import TokenLayout, check_token_ids


class VARGenerator(AdaLNConditioned, GeneratorModule):
    """depth: number of blocks; width and heads default to VAR's rule ``64 * depth`` and ``depth``
    (VAR-d16: 1024 wide, 16 heads, ~310M parameters). scales: token-map sides coarse to fine (the
    tokenizer's); input_dim: the tokenizer's code width (VAR's Cvae = 32). condition: partial
    constructor of the condition embedder (``ClassEmbedder`` or ``TextConditioner``).
    drop_path_rate: None = VAR's ``0.1 * depth / 24``; init_*: VAR's ``init_weights`` (the README
    trains d16 with ``init_adaln_gamma=1e-3``)."""

    capabilities = Capabilities(output="logits", reorder=True)  # one pass decides a whole scale: no chain

    def __init__(self, *, vocab_size: int, scales: list[int] | tuple[int, ...], input_dim: int,
                 condition: Callable[..., nn.Module], depth: int, width: int | None = None,
                 n_head: int | None = None, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 l2_norm_attention: bool = True, dropout: float = 0.0, attn_dropout: float = 0.0,
                 drop_path_rate: float | None = None, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5,
                 init_head: float = 0.02, init_std: float | None = None) -> None:
        super().__init__()
        scales = tuple(int(s) for s in scales)
        if len(scales) < 2 or list(scales) != sorted(set(scales)):
            raise ValueError(f"scales must be at least 2 strictly increasing sides, got {list(scales)}")
        self.vocab_size, self.scales, self.input_dim, self.depth = vocab_size, scales, input_dim, depth
        self.dim = 64 * depth if width is None else width
        self.n_head = depth if n_head is None else n_head
        self.layout = TokenLayout(kind="scales", shapes=tuple((s, s) for s in scales), vocab_size=vocab_size)
        self.first_len = scales[0] ** 2
        c = self.dim
        self.cond_embed = condition(dim=c)
        self.prefix_len = int(self.cond_embed.num_tokens) if self.text else 0
        self.word_embed = nn.Linear(input_dim, c)
        self.pos_start = nn.Parameter(torch.zeros(1, self.first_len, c))
        self.pos_1LC = nn.Parameter(torch.zeros(1, self.layout.length, c))
        self.lvl_embed = nn.Embedding(len(scales), c)
        rate = 0.1 * depth / 24 if drop_path_rate is None else drop_path_rate
        rates = [rate * i / max(depth - 1, 1) for i in range(depth)]  # linear in depth, as VAR
        self.blocks = nn.ModuleList(
            AdaLNSelfAttnBlock(dim=c, cond_dim=c, n_head=self.n_head, mlp_ratio=mlp_ratio, norm_eps=norm_eps,
                               l2_norm=l2_norm_attention, dropout=dropout, attn_dropout=attn_dropout,
                               drop_path_rate=rates[i]) for i in range(depth))
        self.head_nm = AdaLayerNorm(dim=c, cond_dim=c, eps=norm_eps, order="scale_shift")
        self.head = nn.Linear(c, vocab_size)
        levels = [k for k, s in enumerate(scales) for _ in range(s * s)]
        self.register_buffer("levels", torch.tensor(levels), persistent=False)  # (L,) scale of each position
        self.register_buffer("slot_levels", torch.tensor([-1] * self.prefix_len + levels),
                             persistent=False)  # (T + L,) the prefix is the coarsest block
        begins = [0]
        for s in scales:
            begins.append(begins[-1] + s * s)
        self.begins = begins  # scale k covers positions [begins[k], begins[k + 1])
        self._residual: tuple[nn.Module, ...] = ()
        self._init_weights(init_std, init_head, init_adaln, init_adaln_gamma)

    def _init_weights(self, std: float | None, init_head: float, init_adaln: float, gamma: float) -> None:
        """VAR ``init_weights``: trunc-normal(sqrt(1/(3C))) everywhere, scaled-down head and output
        projections, adaLN gammas near zero so every block starts close to the identity."""
        std = math.sqrt(1 / self.dim / 3) if std is None else std
        encoder = getattr(self.cond_embed, "encoder", None)  # a text encoder keeps its own init
        skip = set() if encoder is None else {id(m) for m in encoder.modules()}
        for m in self.modules():
            if id(m) in skip:
                continue
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for p in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(p, std=std)
        with torch.no_grad():
            self.head.weight.mul_(init_head)
            self.head_nm.ada_lin[1].weight.mul_(init_adaln)
            for block in self.blocks:
                block.attn.proj.weight.div_(math.sqrt(2 * self.depth))
                block.ffn.fc2.weight.div_(math.sqrt(2 * self.depth))
                w = block.ada_lin[1].weight
                w[2 * self.dim:].mul_(init_adaln)
                w[: 2 * self.dim].mul_(gamma)

    # ---- the tokenizer's accumulate step ----------------------------------------------------
    @classmethod
    def sizes_from_layout(cls, layout: TokenLayout, tokenizer_config: dict[str, Any]) -> dict[str, Any]:
        """The constructor arguments a token layout fixes: vocabulary, the (square) scales, and the width
        of the tokenizer's codes (VAR's Cvae, from the tokenizer's config)."""
        if layout.kind != "scales":
            raise ValueError(f"{cls.__name__} predicts scale-residual tokens but the code cache holds "
                             f"{layout.kind} tokens: tokenize with a scale-residual tokenizer (experiment=shapes_msvq)")
        if any(a != b for a, b in layout.shapes):
            raise ValueError(f"next-scale generators need square token maps, the cache has {layout.shapes}")
        return {"vocab_size": layout.vocab_size, "scales": [a for a, _ in layout.shapes],
                "input_dim": tokenizer_config.get("embed_dim")}

    binds = ("tokenizer",)  # the next-scale inputs come from the tokenizer's accumulate step

    def bind(self, *, tokenizer: Any) -> None:
        """Protocol 2's binding (:func:`argen.core.protocols.bind`): :meth:`attach_tokenizer`."""
        self.attach_tokenizer(tokenizer)

    def attach_tokenizer(self, tokenizer: Any) -> None:
        """Hand over the scale-residual quantizer whose accumulate step builds the next-scale inputs
        (a :class:`~tokenizers_vq.msvq.MultiScaleVQTokenizer` or its ``quantize``). Kept outside
        the state dict and the parameters: it is the tokenizer's, frozen."""
        quantizer = getattr(tokenizer, "quantize", tokenizer)
        if not hasattr(quantizer, "next_scale_inputs"):
            raise TypeError(f"VAR needs a scale-residual tokenizer (tokenizers_vq.msvq), got "
                            f"{type(tokenizer).__name__}")
        if tuple(quantizer.scales) != self.scales or quantizer.codebook_size != self.vocab_size \
                or quantizer.embed_dim != self.input_dim:
            raise ValueError(f"tokenizer mismatch: the tokenizer has scales {list(quantizer.scales)}, "
                             f"{quantizer.codebook_size} codes of width {quantizer.embed_dim}; this VAR expects "
                             f"scales {list(self.scales)}, {self.vocab_size} codes of width {self.input_dim}")
        quantizer.requires_grad_(False)
        self._residual = (quantizer,)

    def residual(self, device: torch.device) -> Any:
        if not self._residual:
            raise RuntimeError("this VAR has no tokenizer attached: call generator.attach_tokenizer(tokenizer) "
                               "with the scale-residual tokenizer its codes came from (argen-train and "
                               "argen-sample do this from tokenizer_path / the export's meta.json)")
        quantizer = self._residual[0]
        if quantizer.embedding.weight.device != device:
            quantizer.to(device)
        return quantizer

    # ---- conditioning -------------------------------------------------------------------------
    def _condition(self, cond: Condition) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """-> adaLN vector (B, C), text prefix (B, T, C) or None, prefix validity (B, T) or None."""
        return pooled_condition(self.cond_embed, cond)

    def _head(self, h: Tensor, cond_vec: Tensor) -> Tensor:
        return self.head(self.head_nm(h, cond_vec)).float()  # (B, N, V)

    def check_tokens(self, tokens: Tensor) -> None:
        check_token_ids(tokens, self.vocab_size, owner="generator", dtypes=(torch.int64, torch.int32))

    # ---- training -------------------------------------------------------------------------------
    def logits(self, tokens: Tensor, cond: Condition) -> Tensor:
        """Teacher-forced logits (B, L, V) of every scale in one block-causal pass."""
        b, length = tokens.shape
        if length != self.layout.length:
            raise ValueError(f"expected {self.layout.length} tokens per image (scales {list(self.scales)}), "
                             f"got {length}")
        self.check_tokens(tokens)
        inputs = self.residual(tokens.device).next_scale_inputs(tokens)  # (B, L - first, D) fp32
        cond_vec, prefix, valid = self._condition(cond)
        sos = cond_vec[:, None] + self.pos_start  # (B, first, C)
        x = torch.cat([sos, self.word_embed(inputs.to(self.word_embed.weight.dtype))], dim=1)
        x = x + self.lvl_embed(self.levels)[None] + self.pos_1LC  # (B, L, C)
        key_valid = None
        if prefix is not None:
            x = torch.cat([prefix, x], dim=1)  # (B, T + L, C)
            if valid is not None:
                key_valid = torch.cat([valid, valid.new_ones(b, length)], dim=1)
        mask = level_mask(self.slot_levels, self.slot_levels, key_valid)
        for block in self.blocks:
            x = block(x, cond_vec, mask=mask)
        return self._head(x[:, self.prefix_len:], cond_vec)

    def loss(self, tokens: Tensor, cond: Condition) -> LossOutput:
        """Cross-entropy over all L positions (VAR: weight 1/L per token, mean over the batch)."""
        if self.training:
            cond = cond.with_dropout(self.condition_dropout)
        logits = self.logits(tokens, cond)
        per_token = F.cross_entropy(logits.reshape(-1, self.vocab_size), tokens.reshape(-1),
                                    reduction="none").view(tokens.shape)
        loss = per_token.mean()
        logs = {"loss": loss.detach()}
        with torch.no_grad():
            logs["token_accuracy"] = (logits.argmax(-1) == tokens).float().mean()
            for k in range(len(self.scales)):
                logs[f"loss_scale{k}"] = per_token[:, self.begins[k]:self.begins[k + 1]].mean().detach()
        return LossOutput(loss=loss, logs=logs)

    # ---- inference ------------------------------------------------------------------------------
    def plan(self, length: int | None = None) -> list[Tensor]:
        """One whole scale per step, coarse to fine (the whole pyramid: ``length`` None or L)."""
        if length is not None and int(length) != self.layout.length:
            raise ValueError(f"VAR decodes every scale: plan length must be {self.layout.length}, got {length}")
        return [torch.arange(self.begins[k], self.begins[k + 1]) for k in range(len(self.scales))]

    def start(self, cond: Condition, *, max_len: int | None = None) -> DecodeState:
        """KV caches for prefix + L slots; the prefix and the start token run with the first step."""
        cond_vec, prefix, valid = self._condition(cond)
        param = self.head.weight
        b = cond_vec.shape[0]
        slots = round_up(self.prefix_len + self.layout.length, 8)
        caches = allocate_kv(self.depth, b, self.n_head, slots, self.dim // self.n_head, like=param)
        first = cond_vec[:, None] + self.pos_start + (self.lvl_embed(self.levels[: self.first_len])
                                                      + self.pos_1LC[0, : self.first_len])[None]
        pending = first if prefix is None else torch.cat([prefix, first], dim=1)
        key_valid = None
        if valid is not None:
            key_valid = torch.ones(b, slots, dtype=torch.bool, device=param.device)
            key_valid[:, : self.prefix_len] = valid
        quantizer = self.residual(param.device)
        extras = {"cond": cond_vec.to(param.dtype), "f_hat": quantizer.empty_fhat(b, param.device)}
        return DecodeState(caches=caches, batch_size=b, prefix_len=self.prefix_len, max_len=slots,
                           pending=pending.to(param.dtype), key_valid=key_valid, extras=extras)

    def _scale_of(self, position: int) -> int:
        return max(k for k in range(len(self.scales)) if self.begins[k] <= position)

    def step(self, state: DecodeState, tokens: Tensor, positions: Tensor, query: Tensor) -> StepOutput:
        """Feed the last decided scale (B, pn_k^2) at its ``positions`` (nothing on the first step) and
        return logits for ``query`` positions of the next scale (B, Q, V)."""
        f = tokens.shape[1]
        positions = positions.to(torch.long).cpu()
        if state.pending is not None:
            if f:
                raise ValueError("the first VAR step feeds nothing: it runs the condition and the start token")
            nxt = 0
        else:
            fed = state.uniform_fed()  # VAR's rows advance together, one scale per step
            k = self._scale_of(fed) if fed < self.layout.length else len(self.scales)
            if k >= len(self.scales) - 1:
                raise ValueError(f"all {len(self.scales)} scales are decided: nothing left to predict")
            expected = torch.arange(self.begins[k], self.begins[k + 1])
            if not torch.equal(positions, expected):
                raise ValueError(f"VAR steps feed one whole scale: expected positions {self.begins[k]}.."
                                 f"{self.begins[k + 1] - 1} (scale {k}), got {positions.tolist()[:8]}...")
            nxt = k + 1
        query = query.to(torch.long).cpu()
        lo, hi = self.begins[nxt], self.begins[nxt + 1]
        if query.numel() and (int(query.min()) < lo or int(query.max()) >= hi):
            raise ValueError(f"query positions must lie in scale {nxt} ({lo}..{hi - 1}), the scale this step "
                             f"computes; got {query.tolist()[:8]}")
        cond_vec, f_hat = state.extras["cond"], state.extras["f_hat"]
        if state.pending is not None:
            x = state.pending
        else:
            if tokens.device.type == "cpu":
                self.check_tokens(tokens)
            quantizer = self.residual(tokens.device)
            f_hat = quantizer.accumulate(f_hat, nxt - 1, tokens)  # the tokenizer's step (algorithms.md 1.2)
            inputs = quantizer.next_input(f_hat, nxt - 1)  # (B, pn^2, D)
            x = self.word_embed(inputs.to(self.word_embed.weight.dtype))
            x = x + (self.lvl_embed(self.levels[lo:hi]) + self.pos_1LC[0, lo:hi])[None]
        start, n = int(state.lengths[0]), x.shape[1]
        mask = None  # a later scale sees every cached slot; masks only for the prefix block and padding
        if (state.pending is not None and self.prefix_len) or state.key_valid is not None:
            levels = self.slot_levels[: start + n]
            valid = None if state.key_valid is None else state.key_valid[:, : start + n]
            mask = level_mask(levels[start:], levels, valid)
        for block, cache in zip(self.blocks, state.caches):
            x = block(x, cond_vec, mask=mask, cache=cache, start=start)
        state.pending, state.pending_rows = None, None
        state.lengths += n
        state.fed += f
        state.extras["f_hat"] = f_hat  # committed with the cache, after the blocks ran
        hidden = x[:, (query - lo + (n - (hi - lo))).to(x.device)]  # (B, Q, C)
        return StepOutput(logits=self._head(hidden, cond_vec), hidden=hidden)

    def flops_per_token(self) -> float:
        """Average forward FLOPs per generated token (2 per multiply-add): block matmuls, adaLN and
        head per slot, and attention over the slots visible at each scale."""
        c, length = self.dim, self.layout.length
        hidden = self.blocks[0].ffn.fc1.out_features
        matmul = self.depth * 2 * (4 * c * c + 2 * c * hidden) + 2 * c * self.vocab_size
        visible = sum(s * s * (self.prefix_len + self.begins[k + 1]) for k, s in enumerate(self.scales))
        attention = self.depth * 4 * c * visible / length
        return float(matmul + attention)

    def extra_repr(self) -> str:
        return f"scales={list(self.scales)}, width={self.dim}, heads={self.n_head}, prefix={self.prefix_len}"
