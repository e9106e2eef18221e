"""A continuous-output test double of the protocol: entities whose exact distribution is known.

Entity i of a sample (C channels) is drawn from N(mu_i, sigma^2) per channel, with
``mu_i = m[label] + o_i + W mean(x_<i)`` (0 for the first entity): it depends on its condition and on the
entities committed before it, through the decode state. Its velocity under the protocol's convention
(``x_t = (1 - t) x + t eps``, velocity ``eps - x``) is exact:
``v = (t - (1 - t) sigma^2) / var_t (x_t - (1 - t) mu) - mu`` with ``var_t = (1 - t)^2 sigma^2 + t^2``.
The velocity is linear in ``mu`` at fixed ``t``, so classifier-free guidance of two such flows is the flow
of N(mu_u + s (mu_c - mu_u), sigma^2): the guided distribution is known exactly too. Its loss is flow
matching's MSE against ``eps - x``, so training reaches every parameter. The real continuous generators
(xAR, FlexTok) register here the same way when they land.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from argen.core import Capabilities, Condition, DecodeState, LossOutput, StepOutput
from argen.nn.module import GeneratorModule
from tokenizers_vq.layout import TokenLayout


class GaussianFlowToy(GeneratorModule):
    capabilities = Capabilities(output="velocity", rollback=True, reorder=True)

    def __init__(self, *, length: int = 3, channels: int = 2, num_classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.layout = TokenLayout(kind="sequence", shapes=((1, length),), vocab_size=None, channels=channels)
        self.num_classes = num_classes
        self.means = nn.Parameter(2 * torch.randn(num_classes + 1, channels, generator=g))  # last row: null
        self.offsets = nn.Parameter(torch.randn(length, channels, generator=g))
        self.mix = nn.Parameter(0.8 * torch.randn(channels, channels, generator=g))
        self.log_sigma = nn.Parameter(torch.full((channels,), -0.7))

    def null_cond(self, cond: Condition) -> Condition:
        return cond.as_null()

    def _labels(self, cond: Condition) -> Tensor:
        assert cond.labels is not None
        return torch.where(cond.null_mask().to(cond.labels.device), self.num_classes, cond.labels)

    def mu(self, labels: Tensor, entities: Tensor, position: int) -> Tensor:
        """(B, C) mean of entity ``position`` given the first ``position`` entities (B, >= position, C)."""
        context = entities[:, :position].mean(1) @ self.mix.T if position else 0.0
        return self.means[labels] + self.offsets[position] + context

    def exact_velocity(self, x_t: Tensor, t: Tensor, mu: Tensor) -> Tensor:
        s2 = (2 * self.log_sigma).exp()
        var = (1 - t) ** 2 * s2 + t ** 2
        return (t - (1 - t) * s2) / var * (x_t - (1 - t) * mu) - mu

    def loss(self, tokens: Tensor, cond: Condition) -> LossOutput:
        labels = self._labels(cond.with_dropout(0.1) if self.training else cond)
        t = torch.rand(tokens.shape[0], tokens.shape[1], 1)
        eps = torch.randn_like(tokens)
        x_t = (1 - t) * tokens + t * eps
        mu = torch.stack([self.mu(labels, tokens, i) for i in range(tokens.shape[1])], dim=1)
        loss = ((self.exact_velocity(x_t, t, mu) - (eps - tokens)) ** 2).mean()
        return LossOutput(loss=loss, logs={"loss": loss.detach()})

    def plan(self, length: int | None = None) -> list[Tensor]:
        n = self.layout.length if length is None else int(length)
        return [torch.tensor([i]) for i in range(n)]

    def start(self, cond: Condition, *, max_len: int | None = None) -> DecodeState:
        b = len(cond)
        return DecodeState(caches=[], batch_size=b, prefix_len=0, max_len=self.layout.length,
                           extras={"labels": self._labels(cond), "entities": self.layout.empty(b)})

    def step(self, state: DecodeState, tokens: Tensor, positions: Tensor, query: Tensor) -> StepOutput:
        """Commit ``tokens`` (B, F, C) at ``positions`` (F,), continuing every row's sequence."""
        if tokens.shape[1]:
            self.layout.check_tokens(tokens, owner="flow toy")
        fed = state.uniform_fed()
        if positions.tolist() != list(range(fed, fed + len(positions))):
            raise ValueError(f"positions {positions.tolist()} do not continue the {fed} entities fed")
        state.extras["entities"][:, fed:fed + len(positions)] = tokens
        state.fed, state.lengths = state.fed + len(positions), state.lengths + len(positions)
        return StepOutput(logits=None)

    def velocity(self, state: DecodeState, x_t: Tensor, t: Tensor, query: Tensor) -> Tensor:
        """(B, Q, C) at x_t (B, Q, C), t (B, Q) for the queried entities, each after every entity fed."""
        fed = state.uniform_fed()
        if bool((query > fed).any()):
            raise ValueError(f"query {query.tolist()} needs entities not fed yet ({fed} fed)")
        mu = torch.stack([self.mu(state.extras["labels"], state.extras["entities"], int(q)) for q in query], 1)
        return self.exact_velocity(x_t, t[..., None], mu)
