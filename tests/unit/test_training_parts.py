"""EMA, schedules, the sharded sampler and image metrics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from argen.data.module import EpochShardSampler
from argen.training.ema import EMA
from argen.training.schedules import build_schedule
from tokenizers_vq.metrics import psnr, ssim


def test_ema_tracks_and_stays_separate() -> None:
    model = nn.Linear(2, 2, bias=False)
    nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, torch.full((2, 2), 0.5))
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, torch.full((2, 2), 0.75))
    assert torch.equal(model.weight, torch.ones(2, 2))  # raw weights untouched
    state = ema.state_dict()
    other = EMA(nn.Linear(2, 2, bias=False), decay=0.5)
    other.load_state_dict(state)
    assert other.num_updates == 2 and torch.equal(other.module.weight, ema.module.weight)


def test_ema_warmup_decay() -> None:
    ema = EMA(nn.Linear(1, 1), decay=0.999)
    assert ema.current_decay() == pytest.approx(0.1)


def test_cosine_schedule_shape() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sch = build_schedule(opt, kind="cosine", total_steps=10, warmup_steps=2, min_ratio=0.1)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(0.1) and lrs[11] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[1:10], lrs[2:11]))
    with pytest.raises(ValueError, match="total_steps"):
        build_schedule(opt, kind="cosine", total_steps=None)


def test_shards_union_equals_single_process_batches() -> None:
    one = list(EpochShardSampler(size=50, global_batch_size=8, world_size=1, rank=0, seed=3))
    r0 = list(EpochShardSampler(size=50, global_batch_size=8, world_size=2, rank=0, seed=3))
    r1 = list(EpochShardSampler(size=50, global_batch_size=8, world_size=2, rank=1, seed=3))
    assert len(one) == 48 and len(r0) == len(r1) == 24
    for b in range(6):  # global batch b = the per-rank batches b of both ranks
        assert sorted(one[8 * b: 8 * b + 8]) == sorted(r0[4 * b: 4 * b + 4] + r1[4 * b: 4 * b + 4])


def test_sampler_epochs_and_skip() -> None:
    s = EpochShardSampler(size=20, global_batch_size=4, world_size=1, rank=0, seed=0)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0
    s.set_epoch(0)
    s.skip_batches = 2
    assert list(s) == e0[8:]
    assert list(s) == e0  # the skip applies to one iteration only
    with pytest.raises(ValueError, match="not divisible"):
        EpochShardSampler(size=20, global_batch_size=5, world_size=2, rank=0, seed=0)


def test_psnr_and_ssim_reference_values() -> None:
    x = torch.zeros(1, 3, 16, 16)
    y = x + 0.2  # 0.1 on the [0, 1] scale -> MSE 0.01 -> 20 dB
    assert psnr(x, y).item() == pytest.approx(20.0, abs=1e-4)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    noisy = (x + 0.5 * torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert ssim(x, noisy).item() < 0.2
    assert not math.isnan(ssim(x, y).item())


def test_ssim_matches_skimage() -> None:
    skm = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(1, 3, 32, 32, generator=g)).clamp(-1, 1)
    ours = ssim(a, b).item()
    ref = skm.structural_similarity(((a[0] + 1) / 2).permute(1, 2, 0).numpy(), ((b[0] + 1) / 2).permute(1, 2, 0).numpy(),
                                    channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
    assert ours == pytest.approx(ref, abs=2e-3)
