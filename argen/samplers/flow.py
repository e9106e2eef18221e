"""Flow sampling of continuous entities: walk a velocity generator's plan and, for each group, integrate its
flow from noise (t = 1) to data (t = 0), then commit the finished entities as the next groups' clean context.

The protocol's convention (:class:`~argen.core.protocols.FlowGenerator`, xAR's): ``x_t = (1 - t) x + t eps``,
velocity ``v = eps - x``. Two solvers (xAR's ``models/sampler.py``, algorithms.md 4.5):

* ``sde`` (xAR's default, ``euler_maruyama_sampler``): times ``linspace(1, t_min, steps)`` then 0. Each step
  but the last turns the velocity into the score of the linear path,
  ``s = ((alpha / alpha') v - x) / (sigma^2 - (alpha / alpha') sigma' sigma)`` with alpha = 1 - t, sigma = t
  (which is ``(-(1 - t) v - x) / t``), takes the drift ``d = v - g^2 s / 2`` with diffusion ``g^2 = 2 t`` and
  moves ``x <- x + d dt + sqrt(g^2) sqrt(|dt|) xi``; the last step (t_min -> 0) is deterministic,
  ``x + dt d``. ``steps`` velocity evaluations per entity.
* ``ode`` (``euler_sampler``): times ``linspace(1, 0, steps + 1)``, ``x <- x + dt v``.

Guidance mixes the doubled rows through the shared :class:`~argen.samplers.policy.DecodingPolicy`,
``v_u + s (v_c - v_u)``, with the scale's schedule over the plan: xAR's ramp ``1 + (cfg - 1) m / (M - 1)``
over its M entities is ``cfg_schedule=linear`` (argen/configs/sampler/flow.yaml). The official code mixes the
drifts; the drift is affine in v with the same x in both halves, so that is the same mix. The state of the
solver is float64, as the official code keeps it (the generator runs in its own dtype).

diffusers: ``FlowMatchEulerDiscreteScheduler`` given ``sigmas = linspace(1, 0, steps + 1)[:-1]`` takes exactly
the ``ode`` steps (tests/unit/test_flow_sampler.py checks it). The loop does not call it: its default grid
stops at 1 / num_train_timesteps instead of 0, its stochastic mode is not xAR's Euler-Maruyama and draws
from one ``torch.Generator`` for the whole batch (an image would depend on its batch-mates), and its step
counter belongs to the scheduler while xAR restarts the schedule for every entity.

Randomness: each row's own streams (:class:`RowRandom`): per group, one normal draw for the starting noise,
then (sde) one per stochastic step, so a sample does not depend on its batch-mates or the batch size.
``temperature`` scales the starting noise (1 = the model's distribution).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from argen.core import (Condition, DecodeState, FlowGenerator, Requirements, SampleResult, SamplingStats,
                        check_compatible)
from argen.samplers.common import OnFinish, finish, in_batches
from argen.samplers.policy import DecodingPolicy
from argen.samplers.random import RowRandom

METHODS = ("sde", "ode")
Trace = Callable[[int, Tensor], None]  # (step index, x after it (B, Q, C) float64)


def euler_times(steps: int, device: torch.device | str = "cpu") -> Tensor:
    """(steps + 1,) noise levels from 1 (noise) down to 0 (data), evenly spaced (the ODE grid), float64."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=device)


def sde_times(steps: int, t_min: float = 0.04, device: torch.device | str = "cpu") -> Tensor:
    """(steps + 1,) xAR's Euler-Maruyama grid: ``linspace(1, t_min, steps)`` then 0, float64."""
    grid = torch.linspace(1.0, t_min, steps, dtype=torch.float64, device=device)
    return torch.cat([grid, grid.new_zeros(1)])


def sde_drift(v: Tensor, x: Tensor, t: float) -> Tensor:
    """The reverse-SDE drift ``v - g^2 s / 2`` with ``g^2 = 2 t`` and s the linear path's score from v."""
    ratio = -(1.0 - t)  # alpha / alpha' with alpha = 1 - t
    score = (ratio * v - x) / (t * t - ratio * t)  # sigma = t, sigma' = 1
    return v - t * score


class FlowSampler:
    """method: ``sde`` (xAR's Euler-Maruyama) or ``ode`` (Euler); steps: velocity evaluations per entity
    group; t_min: where the SDE's stochastic steps end (then one deterministic step to 0); temperature:
    scale of the starting noise; cfg_scale / cfg_schedule: see :class:`~argen.samplers.guidance.Guidance`
    (1.0 = no guidance)."""

    requires = Requirements(output="velocity")
    name = "flow"

    def __init__(self, *, method: str = "sde", steps: int = 25, t_min: float = 0.04, temperature: float = 1.0,
                 cfg_scale: float = 1.0, cfg_schedule: str = "constant") -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)} (xAR's SDE or the Euler ODE), got {method!r}")
        if steps < 1 or (method == "sde" and steps < 2):
            raise ValueError(f"steps must be >= 1 (>= 2 for the sde: stochastic steps, then the last deterministic "
                             f"one), got {steps}")
        if not 0.0 < t_min < 1.0:
            raise ValueError(f"t_min must be in (0, 1) (where the SDE's noise stops; xAR: 0.04), got {t_min}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (it scales the starting noise), got {temperature}")
        self.method, self.steps, self.t_min, self.temperature = method, int(steps), float(t_min), float(temperature)
        self.policy = DecodingPolicy(cfg_scale=cfg_scale, cfg_schedule=cfg_schedule)

    def settings(self) -> dict[str, object]:
        s = self.policy.settings()
        return {"sampler": self.name, "method": self.method, "steps": self.steps, "t_min": self.t_min,
                "temperature": self.temperature, "cfg_scale": s["cfg_scale"], "cfg_schedule": s["cfg_schedule"]}

    def times(self, device: torch.device | str = "cpu") -> Tensor:
        return sde_times(self.steps, self.t_min, device) if self.method == "sde" else euler_times(self.steps, device)

    @torch.no_grad()
    def sample(self, generator: FlowGenerator, cond: Condition, *, seeds: Tensor, batch_size: int | None = None,
               on_finish: OnFinish | None = None) -> SampleResult:
        """cond: N conditions; seeds: (N,) per-sample seeds; at most ``batch_size`` rows at a time."""
        check_compatible(self, generator)
        self.policy.begin(generator)
        return in_batches(lambda c, s: self._batch(generator, c, s), cond, seeds, batch_size, on_finish)

    def integrate(self, generator: FlowGenerator, state: DecodeState, group: Tensor, rng: RowRandom,
                  channels: int, trace: Trace | None = None) -> Tensor:
        """The group's entities (B, Q, C) (float64), from this group's draws of ``rng`` (the starting noise,
        then one per stochastic step) to t = 0; ``trace(k, x)`` hears x after every step."""
        device = state.device
        x = self.temperature * rng.normal(len(group), channels, device=device).double()
        times, rows = self.times(device), self.policy.rows
        for k in range(self.steps):
            t_cur, dt = float(times[k]), float(times[k + 1] - times[k])
            t = rows(torch.full(x.shape[:2], t_cur, dtype=x.dtype, device=device))  # (B', Q), float64
            v = self.policy.guided(generator.velocity(state, rows(x).to(generator.dtype), t, group), group).double()
            if self.method == "ode":
                x = x + dt * v
            elif k < self.steps - 1:  # Euler-Maruyama
                xi = rng.normal(len(group), channels, device=device).double()
                x = x + sde_drift(v, x, t_cur) * dt + (2 * t_cur) ** 0.5 * abs(dt) ** 0.5 * xi
            else:  # the last step, t_min -> 0, deterministic
                x = x + dt * sde_drift(v, x, t_cur)
            if trace is not None:
                trace(k, x)
        return x

    def _batch(self, generator: FlowGenerator, cond: Condition, seeds: Tensor) -> SampleResult:
        start_time = time.perf_counter()
        device = generator.device
        rng = RowRandom(seeds.to(device))
        state = generator.start(self.policy.conditions(generator, cond.to(device)))
        tokens = generator.layout.empty(len(cond), device)  # (B, L, C) float latents
        channels = tokens.shape[-1]
        prev = torch.zeros(0, dtype=torch.long)
        stats = SamplingStats()
        for group in generator.plan():
            generator.step(state, self.policy.rows(tokens[:, prev.to(device)]), prev, group)
            tokens[:, group.to(device)] = self.integrate(generator, state, group, rng, channels).to(tokens.dtype)
            prev = group
            stats.forward_passes += 1 + self.steps
            stats.tokens += len(group) * len(cond)
        return SampleResult(tokens=tokens, stats=finish(stats, start_time, device))
