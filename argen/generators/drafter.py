"""EAGLE-style drafter (Li et al. 2024; LANTERN's drafter, algorithms.md 8.4): one decoder layer
that runs autoregressively on the *features* of a target generator and proposes draft tokens for
speculative decoding (:mod:`argen.samplers.speculative`).

Feature i of the target (its last hidden state after the final norm, what its output head reads)
predicts token i. The drafter's input at position i is ``fc([embed(x_i); f_i])``: the token that
was drawn from feature i, next to that feature. Its output ``g_i`` regresses feature i + 1, and
the target's own head turns it into draft logits for token i + 1. At draft time the chain goes on
from the drafter's own outputs: ``fc([embed(d_{i+1}); g_i])`` gives ``g_{i+1}``.

As in EAGLE, the token embedding and the output head are the target's (frozen, not copied: the
drafter is attached to its target with :meth:`EagleDrafter.attach_target` and keeps it outside its
state dict), the decoder layer has no input norm (EAGLE's layer 0), there is no final norm, and the
loss is ``smooth_l1(g_i, f_{i+1}) + 0.1 * CE(softmax(target logits_{i+1}), head(g_i))`` with
uniform noise on the input features. Deliberate differences: training features come from a
teacher-forced pass of the frozen target on self-distilled tokens (computed on the fly, not stored),
conditions are dropped as the target was trained (so the drafter also predicts the unconditional
features that classifier-free guidance needs), the drafter sees only image positions (the condition
reaches it through the target's features; LANTERN also feeds the caption positions, paired with
token id 0, and leaves them unsupervised), and the feature noise has a fixed width where EAGLE's
is ``0.2 * 512 / L`` (tuned for long text sequences: +-0.8 for our 64-token images).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.core import Condition, DecodeState, LossOutput
from argen.core.protocols import FeatureTarget
from argen.core.state import allocate_kv, round_up
from argen.generators.raster import raster_layout
from argen.nn.blocks import TransformerBlock, swiglu_hidden
from argen.nn.module import GeneratorModule
from argen.nn.trunk import row_slots, run_layers


class _Shared:
    """Holds the target so that deep copies of the drafter (its EMA) share it instead of copying it."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def __deepcopy__(self, memo: dict[int, Any]) -> _Shared:
        return self


class EagleDrafter(GeneratorModule):
    """dim / n_head / multiple_of / ffn_dim_multiplier / norm_eps / rope_base / grid_size |
    sequence_length / vocab_size: the target's (``argen-train`` fills them in from ``target_path``);
    feature_noise: EAGLE's uniform noise on the input features, ``(U - 0.5) * feature_noise``;
    logit_weight: weight of the cross-entropy against the target's distribution (EAGLE: 0.1);
    condition_dropout: probability of training on the null condition (the target's CFG dropout)."""

    def __init__(self, *, vocab_size: int, dim: int, n_head: int, grid_size: int | None = None,
                 sequence_length: int | None = None, multiple_of: int = 256, ffn_dim_multiplier: float | None = None,
                 norm_eps: float = 1e-5, rope_base: float = 10000.0, feature_noise: float = 0.2,
                 logit_weight: float = 0.1, condition_dropout: float = 0.1, initializer_range: float = 0.02) -> None:
        super().__init__()
        self.vocab_size, self.dim, self.n_head = vocab_size, dim, n_head
        self.feature_noise, self.logit_weight, self.condition_dropout = feature_noise, logit_weight, condition_dropout
        self.fc = nn.Linear(2 * dim, dim, bias=True)
        self.layer = TransformerBlock(dim=dim, n_head=n_head, ffn_hidden=swiglu_hidden(dim, multiple_of,
                                                                                       ffn_dim_multiplier),
                                      norm_eps=norm_eps)
        self.layer.attention_norm = nn.Identity()  # EAGLE's first (only) layer has no input norm
        self.layout, table = raster_layout(vocab_size, grid_size, sequence_length, dim // n_head, rope_base=rope_base)
        self.register_buffer("rope", table, persistent=False)  # (L, hd/2, 2): position i of the layout
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=initializer_range)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self._target: _Shared | None = None

    # ---- the target -----------------------------------------------------------------------------
    binds = ("target",)  # the drafter reads its target's features, embedding and head

    def bind(self, *, target: Any) -> None:
        """Protocol 2's binding (:func:`argen.core.protocols.bind`): :meth:`attach_target`."""
        self.attach_target(target)

    def attach_target(self, target: Any) -> None:
        """Hand over the frozen target generator whose features, token embedding and output head the
        drafter uses. It stays outside the drafter's state dict and parameters."""
        if not isinstance(target, FeatureTarget):
            raise TypeError(f"an EAGLE drafter needs a target with teacher-forced features, a token embedding "
                            f"and an output head (argen.core.protocols.FeatureTarget: a raster generator); "
                            f"{type(target).__name__} is not one")
        dim, vocab, layout = int(target.dim), int(target.vocab_size), target.layout
        n_head = int(target.n_head)
        if (dim, vocab, n_head) != (self.dim, self.vocab_size, self.n_head) \
                or (layout.kind, layout.shapes) != (self.layout.kind, self.layout.shapes):
            raise ValueError(f"drafter/target mismatch: the drafter was built for width {self.dim}, {self.n_head} "
                             f"heads, {self.vocab_size} codes, {self.layout.kind} {list(self.layout.shapes)}; the "
                             f"target has width {dim}, {n_head} heads, {vocab} codes, {layout.kind} "
                             f"{list(layout.shapes)}; train a drafter for this generator "
                             f"(argen-train experiment=shapes_raster_drafter target_path=...)")
        target.requires_grad_(False).eval()
        self._target = _Shared(target)

    @property
    def target(self) -> Any:
        if self._target is None:
            raise RuntimeError("this drafter has no target attached: call drafter.attach_target(generator) with "
                               "the generator it was trained on (argen-train does this from target_path)")
        target = self._target.module
        param = self.fc.weight
        if target.device != param.device or target.dtype != param.dtype:
            target.to(device=param.device, dtype=param.dtype)
        return target

    def head(self, g: Tensor) -> Tensor:
        """Draft logits (float32) from drafter outputs, through the target's output head."""
        return self.target.head(g)

    def _inputs(self, tokens: Tensor, features: Tensor) -> Tensor:
        return self.fc(torch.cat([self.target.embed_tokens(tokens), features.to(self.fc.weight.dtype)], dim=-1))

    def outputs(self, tokens: Tensor, features: Tensor) -> Tensor:
        """Teacher-forced drafter outputs (B, F, C) for (token i, feature i) pairs (B, F) / (B, F, C) at
        positions 0 .. F - 1 in one causal pass: output i approximates feature i + 1. What :meth:`step`
        returns when fed the same pairs (the contract suite checks it), and what :meth:`loss` trains."""
        if tokens.shape[1] > self.layout.length:
            raise ValueError(f"{tokens.shape[1]} drafter positions, the layout has {self.layout.length}")
        return self.layer(self._inputs(tokens, features), self.rope[: tokens.shape[1]])

    # ---- training -------------------------------------------------------------------------------
    def loss(self, tokens: Tensor, cond: Condition) -> LossOutput:
        """EAGLE's loss on the target's teacher-forced features of ``tokens`` (B, L)."""
        target = self.target
        if self.training:
            cond = cond.with_dropout(self.condition_dropout)
        with torch.no_grad():
            feats = target.features(tokens, cond)  # (B, L, C): feature i predicts token i
            p = F.softmax(target.head(feats[:, 1:]), dim=-1)  # target's distribution for tokens 1..L-1
        inp = feats[:, :-1]
        if self.training and self.feature_noise > 0:
            inp = inp + (torch.rand_like(inp) - 0.5) * self.feature_noise
        g = self.outputs(tokens[:, :-1], inp)  # (B, L-1, C)
        feature_loss = F.smooth_l1_loss(g.float(), feats[:, 1:].float())
        logq = F.log_softmax(self.head(g), dim=-1)
        logit_loss = -(p * logq).sum(-1).mean()
        loss = feature_loss + self.logit_weight * logit_loss
        with torch.no_grad():
            # a draft sampled from q is accepted with probability sum_x min(p, q) (= 1 - TVD(p, q))
            acceptance = torch.minimum(p, logq.exp()).sum(-1).mean()
            top1 = (logq.argmax(-1) == p.argmax(-1)).float().mean()
        return LossOutput(loss=loss, logs={"loss": loss.detach(), "feature_loss": feature_loss.detach(),
                                           "logit_loss": logit_loss.detach(), "draft_acceptance": acceptance,
                                           "token_accuracy": top1})

    # ---- drafting -------------------------------------------------------------------------------
    def start(self, batch_size: int) -> DecodeState:
        """An empty KV cache for ``batch_size`` rows (the sampler's, CFG-doubled when guided)."""
        param = self.fc.weight
        caches = allocate_kv(1, batch_size, self.n_head, round_up(self.layout.length, 8), self.dim // self.n_head,
                             like=param)
        return DecodeState(caches=caches, batch_size=batch_size, prefix_len=0, max_len=caches[0].max_len)

    def step(self, state: DecodeState, tokens: Tensor, features: Tensor, counts: Tensor | None = None) -> Tensor:
        """Feed (token i, feature i) pairs (B, F) / (B, F, C) at each row's positions ``state.fed`` onwards,
        the first ``counts[b]`` of them for row b (default: all F); return the drafter's outputs (B, F, C),
        output j approximating feature ``state.fed + j + 1`` (garbage past a row's count)."""
        b, f = tokens.shape
        counts = torch.full((b,), f, dtype=torch.long) if counts is None else counts.to(torch.long).cpu()
        if bool((state.fed + counts > self.layout.length).any()):
            raise ValueError(f"drafter positions go past the last position {self.layout.length - 1} (rows have fed "
                             f"{state.fed.tolist()}, feeding {counts.tolist()} more)")
        slots = row_slots(state.lengths, counts, f)  # prefix 0: slot = layout position
        inside = (slots >= 0).to(tokens.device)
        g = run_layers([self.layer], self._inputs(torch.where(inside, tokens, 0), features),
                       self.rope[slots.clamp_min(0).to(self.rope.device)], state, slots)
        state.lengths, state.fed = state.lengths + counts, state.fed + counts
        return g

    def extra_repr(self) -> str:
        return f"layout={self.layout.kind}{list(self.layout.shapes)}, one layer over the target's features"
