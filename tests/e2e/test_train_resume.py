"""End to end through the CLI: train, export, load; SIGKILL then resume=auto; 2-process DDP."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import argen
import lightning as L
from argen.cli.common import build, compose_config
from tests.conftest import TINY, cli, cli_env

BASE = ["experiment=shapes_vq", *TINY, "data.train.size=64", "trainer.max_steps=24",
        "callbacks.checkpoint.every_n_train_steps=4", "callbacks.reconstruction_grid=null"]


def train(root: Path, *extra: str, expect_rc: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*cli("argen-train"), *BASE, f"paths.output_root={root}", *extra],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    if proc.returncode != expect_rc:
        raise AssertionError(f"argen-train exited {proc.returncode} (expected {expect_rc}):\n{proc.stderr[-4000:]}")
    return proc


def weights(root: Path, name: str = "shapes_vq") -> dict[str, torch.Tensor]:
    return load_file(str(root / "runs" / name / "export" / "model.safetensors"))


def raw_weights(root: Path, name: str = "shapes_vq") -> dict[str, torch.Tensor]:
    ckpt = torch.load(root / "runs" / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {k: v for k, v in ckpt["state_dict"].items() if k.startswith("tokenizer.")}


def test_train_export_load(tmp_path: Path) -> None:
    train(tmp_path, "name=default")
    run = tmp_path / "runs" / "default"
    assert (run / "resolved_config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    tok = argen.load(run / "export")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert tok.decode(tok.encode(x)).shape == (2, 3, 32, 32)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 24 and ckpt["ema"]["num_updates"] == 24
    # EMA and raw weights are both kept, and they differ
    ema = ckpt["ema"]["weights"]["decoder.conv_out.weight"]
    assert not torch.equal(ema, ckpt["state_dict"]["tokenizer.decoder.conv_out.weight"])
    # re-running a finished run resumes and does nothing more
    train(tmp_path, "name=default")
    # resume=null over an existing run is refused rather than overwriting it
    proc = train(tmp_path, "name=default", "resume=null", expect_rc=1)
    assert "resume=auto" in proc.stderr


def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    straight, killed = tmp_path / "a", tmp_path / "b"
    train(straight)
    # 64 samples / global batch 8 = 8 steps per epoch; checkpoint at 12 is mid-epoch, kill at 14.
    proc = subprocess.run([*cli("argen-train"), *BASE, f"paths.output_root={killed}",
                           "+callbacks.kill._target_=tests.helpers.KillAtStep", "+callbacks.kill.step=14"],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (killed / "runs" / "shapes_vq" / "export").exists()
    ckpt = torch.load(killed / "runs" / "shapes_vq" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 12
    train(killed, "resume=auto")
    for name, reference in (("raw", raw_weights(straight)), ("ema", weights(straight))):
        resumed = raw_weights(killed) if name == "raw" else weights(killed)
        assert resumed.keys() == reference.keys()
        for k in reference:
            torch.testing.assert_close(resumed[k], reference[k], atol=1e-6, rtol=1e-5, msg=f"{name} {k}")


def test_missing_resume_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    proc = train(tmp_path, f"resume={tmp_path}/nope.ckpt", expect_rc=1)
    assert "does not exist" in proc.stderr and "resume=auto" in proc.stderr


@pytest.mark.multiprocess
def test_two_process_ddp_matches_one_process_doubled_batch(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    # global batch 8: one process x 8 vs two gloo processes x 4 over the same sample order
    train(one, "trainer.max_steps=8")
    train(two, "trainer.max_steps=8", "trainer=ddp_cpu")
    a, b = raw_weights(one), raw_weights(two)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, f"DDP and single-process weights differ by {worst}"
    # ...and both really trained: the weights moved away from the seeded initialisation
    cfg = compose_config("train", ["experiment=shapes_vq", *TINY])
    L.seed_everything(0)
    init = {f"tokenizer.{k}": v for k, v in build(cfg.tokenizer, "tokenizer").state_dict().items()}
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-3


def test_scale_residual_tokenizer_trains_with_per_scale_usage(tmp_path: Path) -> None:
    from argen.cli.train import run

    cfg = compose_config("train", ["experiment=shapes_msvq", f"paths.output_root={tmp_path}", *TINY,
                                   "tokenizer.scales=[1,2,4,16]", "tokenizer.embed_dim=4", "data.train.size=32",
                                   "trainer.max_steps=6", "trainer.log_every_n_steps=1", "module.dead_code_restart_every=3", "logger=default",
                                   "logger.tensorboard=null", "callbacks.reconstruction_grid=null"])
    result = run(cfg)
    tok = argen.load(result["export_dir"])
    assert tok.layout.kind == "scales" and tok.layout.length == 1 + 4 + 16 + 256
    assert tok.encode(torch.rand(2, 3, 32, 32) * 2 - 1).shape == (2, 277)
    assert not torch.allclose(tok.quantize.usage_ema_scales[0], tok.quantize.usage_ema_scales[-1])
    logged = (Path(result["run_dir"]) / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/perplexity_scale0", "train/perplexity_scale3", "train/restarted_codes"} <= set(logged)
