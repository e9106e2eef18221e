"""What every sampler does before its first and after its last generator step."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from argen.core import Condition, SampleResult, SamplingStats

# (sample indices (R,), their tokens (R, L)): called as samples finish (argen-sample writes them out).
OnFinish = Callable[[list[int], Tensor], None]


def finish(stats: SamplingStats, start_time: float, device: torch.device) -> SamplingStats:
    """Record the wall time (after the device's queued work) and return ``stats``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.wall_seconds = time.perf_counter() - start_time
    return stats


def check_request(cond: Condition, seeds: Tensor, batch_size: int | None) -> None:
    """One seed per condition and a positive batch size, else a clear error (every sampler's ``sample``)."""
    if len(seeds) != len(cond):
        raise ValueError(f"{len(seeds)} seeds for {len(cond)} conditions")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def in_batches(sample_batch: Callable[[Condition, Tensor], SampleResult], cond: Condition, seeds: Tensor,
               batch_size: int | None, on_finish: OnFinish | None) -> SampleResult:
    """Sample ``cond`` in consecutive batches of at most ``batch_size`` rows (samplers whose rows advance
    together: a batch's rows all finish at once, so there is nothing to refill)."""
    n = len(cond)
    check_request(cond, seeds, batch_size)
    size = min(batch_size or n, n)
    parts, stats = [], SamplingStats()
    for start in range(0, n, size):
        rows = torch.arange(start, min(start + size, n))
        result = sample_batch(cond.index(rows.to(cond.device)), seeds[rows])
        parts.append(result.tokens)
        stats.forward_passes += result.stats.forward_passes
        stats.tokens += result.stats.tokens
        stats.wall_seconds += result.stats.wall_seconds
        stats.extra["row_passes"] = stats.extra.get("row_passes", 0.0) + result.stats.forward_passes * len(rows)
        for key, value in result.stats.extra.items():
            stats.extra[key] = max(stats.extra.get(key, value), value) if key.startswith("max_") else value
        if on_finish is not None:
            on_finish(rows.tolist(), result.tokens)
    return SampleResult(tokens=torch.cat(parts), stats=stats)
