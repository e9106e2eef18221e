"""What every sampler does before its first and after its last generator step."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from argen.core import Condition, DecodeState, SamplingStats, check_compatible
from argen.samplers.random import RowRandom


def begin(sampler: Any, generator: Any, cond: Condition, seeds: Tensor) -> tuple[RowRandom, torch.device, DecodeState]:
    """Check the pair and the seeds, then start decoding ``cond`` (doubled with the null condition
    when the sampler's guidance is active) on the generator's device."""
    check_compatible(sampler, generator)
    if len(seeds) != len(cond):
        raise ValueError(f"{len(seeds)} seeds for {len(cond)} conditions")
    device = next(generator.parameters()).device
    state = generator.start(sampler.guidance.double(generator, cond.to(device)))
    return RowRandom(seeds), device, state


def guided_probs(sampler: Any, logits: Tensor, positions: Tensor, length: int) -> Tensor:
    """The sampler's target distributions (B, Q, V) from a step's logits (2B rows when guided) at
    layout ``positions`` (Q,): guidance (its schedule reads the position's progress), then the logits
    processors. The same for targets and drafters, so a draft is proposed from what it is checked by."""
    progress = positions.float().cpu() / max(length - 1, 1)
    return sampler.processor.probs(sampler.guidance.mix(logits, progress))


def processing_settings(sampler: Any) -> dict[str, object]:
    """The logits-processing and guidance settings every sampler reports."""
    p, g = sampler.processor, sampler.guidance
    return {"temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p, "cfg_scale": g.scale,
            "cfg_schedule": g.schedule}


def finish(stats: SamplingStats, start_time: float, device: torch.device) -> SamplingStats:
    """Record the wall time (after the device's queued work) and return ``stats``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.wall_seconds = time.perf_counter() - start_time
    return stats
