"""Shared fixtures: tiny configs composed from the real config tree."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# A model and data small enough that a training run takes seconds on one CPU core.
TINY = [
    "tokenizer.base_channels=8",
    "tokenizer.z_channels=8",
    "tokenizer.norm_groups=4",
    "tokenizer.codebook_size=64",
    "tokenizer.channel_multipliers=[1,2]",
    "tokenizer.attention=false",
    "data.train.size=128",
    "data.val.size=16",
    "data.test.size=16",
    "data.global_batch_size=8",
    "data.eval_batch_size=16",
    "logger=none",
    "callbacks.progress=null",
    "callbacks.reconstruction_grid.every_n_steps=5",
    "trainer.enable_model_summary=false",
    "trainer.val_check_interval=4",
]


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> list[str]:
    return ["experiment=shapes_vq", f"paths.output_root={tmp_path}", *TINY]


def cli_env() -> dict[str, str]:
    """Environment for CLI subprocesses: one thread each, the repo importable."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO), HYDRA_FULL_ERROR="0")
    return env


def cli(name: str) -> list[str]:
    """Command line of an argen console script, run with this interpreter."""
    module = {"argen-train": "argen.cli.train", "argen-export": "argen.cli.export",
              "argen-tokenize": "argen.cli.tokenize", "argen-quickstart": "argen.cli.quickstart"}[name]
    return [sys.executable, "-m", module]
