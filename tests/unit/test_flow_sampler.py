"""The flow sampler's solvers against written-out loops: xAR's Euler-Maruyama SDE (time grid, score from the
velocity, drift, noise, deterministic last step) step by step with the same draws, the Euler ODE against
diffusers' FlowMatchEulerDiscreteScheduler on the same grid, and xAR's CFG ramp over the entities."""

from __future__ import annotations

import pytest
import torch

from argen.core import Condition
from argen.samplers.flow import FlowSampler, sde_times
from argen.samplers.random import RowRandom
from tests.contract.flow_toy import GaussianFlowToy


def test_the_sde_time_grid_is_xars() -> None:
    """linspace(1, 0.04, steps) then 0 (models/sampler.py: euler_maruyama_sampler)."""
    torch.testing.assert_close(sde_times(5), torch.tensor([1.0, 0.76, 0.52, 0.28, 0.04, 0.0], dtype=torch.float64))


def _written_out_sde(v, x, noise, times):  # noqa: ANN001, ANN202
    """xAR's loop, equation by equation: score = ((a / a') v - x) / (s^2 - (a / a') s' s) with a = 1 - t, s = t;
    drift d = v - g^2 score / 2, g^2 = 2 t; x += d dt + sqrt(g^2) sqrt(|dt|) xi; the last step x += dt d."""
    trace = []
    for i in range(len(times) - 1):
        t, dt = float(times[i]), float(times[i + 1] - times[i])
        alpha, d_alpha, sigma, d_sigma = 1 - t, -1.0, t, 1.0
        vel = v(x, t)
        score = ((alpha / d_alpha) * vel - x) / (sigma ** 2 - (alpha / d_alpha) * d_sigma * sigma)
        g2 = 2 * t
        drift = vel - 0.5 * g2 * score
        if i < len(times) - 2:
            x = x + drift * dt + g2 ** 0.5 * abs(dt) ** 0.5 * noise[i]
        else:
            x = x + dt * drift
        trace.append(x)
    return trace


@torch.no_grad()
def test_sde_steps_match_the_written_out_euler_maruyama_loop_step_by_step() -> None:
    g = GaussianFlowToy().eval().double()
    cond, seeds, steps = Condition(labels=torch.tensor([0, 2])), torch.tensor([3, 4]), 6
    sampler = FlowSampler(method="sde", steps=steps)
    sampler.policy.begin(g)
    state = g.start(cond)
    group = g.plan()[0]
    g.step(state, torch.zeros(2, 0, 2, dtype=torch.float64), torch.zeros(0, dtype=torch.long), group)
    got: list[torch.Tensor] = []
    x = sampler.integrate(g, state, group, RowRandom(seeds), 2, trace=lambda k, x: got.append(x.clone()))
    rng = RowRandom(seeds)  # the same draws, in the sampler's order: the start, then one per stochastic step
    start = rng.normal(1, 2).double()
    noise = [rng.normal(1, 2).double() for _ in range(steps - 1)]
    vel = lambda x, t: g.velocity(state, x, torch.full(x.shape[:2], t, dtype=torch.float64), group)  # noqa: E731
    want = _written_out_sde(vel, start, noise, sde_times(steps))
    assert len(got) == steps
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.equal(x, got[-1])


@torch.no_grad()
def test_the_ode_is_diffusers_flow_match_euler_scheduler_on_the_same_grid() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    g = GaussianFlowToy().eval().double()
    cond, seeds, steps = Condition(labels=torch.tensor([1])), torch.tensor([9]), 8
    sampler = FlowSampler(method="ode", steps=steps)
    sampler.policy.begin(g)
    state = g.start(cond)
    group = g.plan()[0]
    g.step(state, torch.zeros(1, 0, 2, dtype=torch.float64), torch.zeros(0, dtype=torch.long), group)
    ours = sampler.integrate(g, state, group, RowRandom(seeds), 2)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(sigmas=torch.linspace(1, 0, steps + 1)[:-1].tolist())
    x = RowRandom(seeds).normal(1, 2).double()
    for k, timestep in enumerate(scheduler.timesteps):
        t = float(scheduler.sigmas[k])
        v = g.velocity(state, x, torch.full(x.shape[:2], t, dtype=torch.float64), group)
        x = scheduler.step(v, timestep, x).prev_sample
    torch.testing.assert_close(ours, x.double(), rtol=1e-5, atol=1e-6)  # diffusers steps in float32


def test_the_linear_schedule_is_xars_cfg_ramp_over_the_entities() -> None:
    """s_m = 1 + (cfg - 1) m / (M - 1) for entity m of M (models/xar.py: sample_tokens)."""
    from tests.unit.test_xar import tiny

    g = tiny("cell")
    sampler = FlowSampler(cfg_scale=2.7, cfg_schedule="linear")
    sampler.policy.begin(g)
    for m, group in enumerate(g.plan()):
        scale = sampler.policy.guidance.scale_at(sampler.policy._progress[group])
        torch.testing.assert_close(scale, torch.full((len(group),), 1 + 1.7 * m / 3))


def test_bad_settings_are_refused_naming_the_fix() -> None:
    with pytest.raises(ValueError, match="method must be one of sde, ode"):
        FlowSampler(method="heun")
    with pytest.raises(ValueError, match=">= 2 for the sde"):
        FlowSampler(method="sde", steps=1)
    with pytest.raises(ValueError, match="t_min must be in"):
        FlowSampler(t_min=0.0)


def test_guidance_at_scale_one_does_not_double_the_rows_under_any_schedule() -> None:
    """Every schedule is 1 throughout at scale 1: no second (null-condition) row, so no doubled batch."""
    from argen.samplers.guidance import SCHEDULES, Guidance

    for schedule in SCHEDULES:
        g = Guidance(scale=1.0, schedule=schedule)
        assert not g.active
        x = torch.randn(3, 4, 2)
        assert torch.equal(g.mix(x, torch.linspace(0, 1, 4)), x)
        assert Guidance(scale=2.0, schedule=schedule).active
    assert FlowSampler(cfg_scale=1.0, cfg_schedule="linear").policy.doubled is False
