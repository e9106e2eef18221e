"""FlexTok end to end on the CLI path a user runs: a FlexTok export -> argen-tokenize (1D register ids) ->
argen-train experiment=shapes_flextok_ar -> export -> argen-sample num_tokens=k (k passes per image, the
prefix decoded with per-sample seeds) -> ShapesEval; and the tokenizer trained by argen-train itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from argen.cli.common import compose_config
from argen.cli.train import run as train_run
from argen.core.errors import ConfigError
from tests.e2e.test_generator_pipeline import TEXT_TINY, sample, shapes_pipeline
from tests.fixtures import export_flextok_tokenizer
from tokenizers_vq.io import load_pretrained


@pytest.fixture(scope="module")
def flextok(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return shapes_pipeline(tmp_path_factory.mktemp("flextok"), export_flextok_tokenizer, "shapes_flextok_ar", *TEXT_TINY,
                           "generator.readout_layer=null")


def test_the_generator_learns_the_1d_layout(flextok: dict[str, Path]) -> None:
    meta = json.loads((flextok["generator"] / "meta.json").read_text())
    assert meta["layout"]["kind"] == "sequence" and meta["layout"]["shapes"] == [[1, 8]]
    assert meta["layout"]["vocab_size"] == 15
    assert load_pretrained(flextok["generator"]).seq_len == 8


@pytest.mark.parametrize("k", [2, 8])
def test_num_tokens_samples_k_tokens_and_decodes_them(flextok: dict[str, Path], tmp_path: Path, k: int) -> None:
    out = tmp_path / f"k{k}"
    settings = sample(flextok, out, f"num_tokens={k}", "prompts=[a photo of a red circle,a photo of two squares]",
                      "n_per_condition=2")
    with np.load(out / "samples.npz") as data:
        arr = data["arr_0"]
    assert arr.shape == (4, 32, 32, 3) and arr.std() > 0
    written = json.loads((out / "settings.json").read_text())
    assert written["stats"]["forward_passes_per_image"] == k
    assert written["config"]["num_tokens"] == k and settings["num_images"] == 4


def test_suite_with_num_tokens_is_scored(flextok: dict[str, Path], tmp_path: Path) -> None:
    settings = sample(flextok, tmp_path / "suite", "num_tokens=4", "suite=shapes", "suite_per_tag=1",
                      "n_per_condition=1", "eval=shapes")
    assert 0.0 <= settings["evaluation"]["overall"] <= 1.0


def test_num_tokens_out_of_range_is_a_clear_error(flextok: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises((ValueError, ConfigError), match=r"num_tokens must be in 1\.\.8"):
        sample(flextok, tmp_path / "bad", "num_tokens=9", "prompts=[a photo of a red circle]")


def test_argen_train_trains_and_exports_a_flextok_tokenizer(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=shapes_flextok", f"paths.output_root={tmp_path}", "trainer.max_steps=3",
                                   "trainer.val_check_interval=3", "callbacks.reconstruction_grid.every_n_steps=3",
                                   "data.train.size=64", "data.val.size=16", "data.global_batch_size=8",
                                   "tokenizer.dim=32", "tokenizer.head_dim=16", "tokenizer.encoder_depth=1",
                                   "tokenizer.decoder_depth=1", "tokenizer.decode_steps=2"])
    result = train_run(cfg)
    tok = load_pretrained(result["export_dir"])
    assert tok.layout.kind == "sequence" and tok.layout.length == 32 and "val/psnr" in result["metrics"]
