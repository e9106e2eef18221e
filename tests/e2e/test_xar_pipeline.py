"""xAR end to end on the CLI path a user runs: a continuous tokenizer export -> argen-tokenize (float latents) ->
argen-train experiment=shapes_xar / digits_xar -> export -> argen-sample sampler=flow (grid, npz, settings.json,
GenEval layout) -> argen-eval, unchanged from the discrete generators."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from argen.cli.common import compose_config
from argen.core import IncompatibleError
from argen.cli.evaluate import run as evaluate_run
from argen.cli.tokenize import run as tokenize_run
from argen.data.codes import CodeDataset
from tests.e2e.test_generator_pipeline import TEXT_TINY, sample, shapes_pipeline, train_generator
from tests.fixtures import export_kl_tokenizer
from tokenizers_vq.io import load_pretrained

XAR_TINY = ["generator=xar_nano", "generator.dim=32", "generator.n_head=2", "generator.encoder_depth=1", "generator.decoder_depth=1"]
FLOW = ["sampler=flow", "sampler.steps=3"]


@pytest.fixture(scope="module")
def xar_text(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return shapes_pipeline(tmp_path_factory.mktemp("xar_text"), export_kl_tokenizer, "shapes_xar", *TEXT_TINY, *XAR_TINY)


def test_the_latent_cache_is_float_and_the_generator_reads_its_layout(xar_text: dict[str, Path]) -> None:
    data = CodeDataset(root=str(xar_text["codes"]), split="train")
    assert data.tokens.dtype == torch.float32 and data.tokens.shape == (40, 64, 4)
    assert data.manifest["preprocessing"]["tokens"].startswith("posterior mean")
    meta = json.loads((xar_text["generator"] / "meta.json").read_text())
    assert meta["kind"] == "generator" and meta["layout"]["channels"] == 4 and meta["layout"]["shapes"] == [[8, 8]]
    gen = load_pretrained(xar_text["generator"])
    assert gen.channels == 4 and gen.grid == (8, 8) and gen.num_entities == 4  # 2x2 cells of 4x4, filled in


def test_flow_sampling_writes_the_usual_outputs(xar_text: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "s"
    settings = sample(xar_text, out, *FLOW, "prompts=[a photo of a red circle,a photo of two squares]",
                      "n_per_condition=3")
    with np.load(out / "samples.npz") as data:
        arr = data["arr_0"]
    assert arr.shape == (6, 32, 32, 3) and arr.dtype == np.uint8 and arr.std() > 0
    assert (out / "grid.png").is_file() and settings["num_images"] == 6
    written = json.loads((out / "settings.json").read_text())
    assert written["sampler"]["sampler"] == "flow" and written["sampler"]["method"] == "sde"
    assert written["stats"]["forward_passes_per_image"] == 4 * (3 + 1)  # per cell: 3 flow steps + the commit pass
    assert written["tokenizer"]["sha256"] == json.loads((xar_text["tokenizer"] / "meta.json").read_text())["sha256"]


def test_images_do_not_depend_on_batch_size_beyond_float_rounding(xar_text: dict[str, Path], tmp_path: Path) -> None:
    """Per-row seeds make each image's noise its own; what is left between batch sizes is float32 GEMM rounding
    (a matmul over 1 row and over 10 rows round differently), which a continuous output carries into the pixels:
    measured 1 value of 18432 one level apart. The discrete generators' argmax / categorical draws absorb it,
    so their images are bit-identical; here the same batch size is bit-identical and other sizes within 1/255."""
    prompts = "prompts=[a photo of a red circle,a photo of a blue square,a photo of three triangles]"
    for name, batch in (("b1", 1), ("b5", 5), ("b5_again", 5)):
        sample(xar_text, tmp_path / name, *FLOW, prompts, "n_per_condition=2", f"batch_size={batch}")
    with np.load(tmp_path / "b1" / "samples.npz") as a, np.load(tmp_path / "b5" / "samples.npz") as b, \
            np.load(tmp_path / "b5_again" / "samples.npz") as c:
        one, five = a["arr_0"].astype(int), b["arr_0"].astype(int)
        assert np.array_equal(five, c["arr_0"])  # deterministic under the seed, bit for bit
        assert np.abs(one - five).max() <= 1 and (one != five).mean() < 1e-3
        assert np.abs(one[0] - one[1]).mean() > 1  # different seeds per index: different images


def test_suite_sampling_writes_geneval_layout_and_argen_eval_scores_it(xar_text: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    settings = sample(xar_text, tmp_path / "suite", *FLOW, "suite=shapes", "suite_per_tag=1", "n_per_condition=2",
                      "eval=shapes")
    folders = sorted((tmp_path / "suite" / "geneval").iterdir())
    assert len(folders) >= 6 and len(list((folders[0] / "samples").iterdir())) == 2
    assert 0.0 <= settings["evaluation"]["overall"] <= 1.0
    report = evaluate_run(compose_config("evaluate", ["eval=shapes", f"samples={tmp_path / 'suite' / 'geneval'}",
                                                      f"output_dir={tmp_path / 'eval'}"]))["shapes"]
    assert report["overall"] == settings["evaluation"]["overall"] and report["n_tasks"] == 6


def test_ancestral_sampling_of_a_flow_generator_is_refused_naming_the_sampler(xar_text: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    with pytest.raises(IncompatibleError, match="needs output=logits.*sampler=flow"):
        sample(xar_text, tmp_path / "bad", "prompts=[a photo of a red circle]")
    assert not (tmp_path / "bad" / "settings.json").exists()


@pytest.mark.parametrize("experiment", ["shapes_xar_scale", "shapes_xar_subsample"])
def test_other_entities_train_and_sample_through_the_cli(xar_text: dict[str, Path], tmp_path: Path,
                                                         experiment: str) -> None:
    export = train_generator(tmp_path, xar_text["tokenizer"], xar_text["codes"], experiment, *TEXT_TINY, *XAR_TINY)
    gen = load_pretrained(export)
    assert gen.entity_kind == experiment.rsplit("_", 1)[1] and gen.num_entities == 4
    p = {**xar_text, "generator": export}
    settings = sample(p, tmp_path / "s", *FLOW, "prompts=[a photo of a red circle]", "n_per_condition=2")
    assert settings["num_images"] == 2 and settings["stats"]["forward_passes_per_image"] == 16


def test_class_conditional_digits_xar(tmp_path: Path) -> None:
    tok = export_kl_tokenizer(tmp_path / "tok", 1)
    codes = tokenize_run(compose_config("tokenize", [f"tokenizer_path={tok}", f"output_dir={tmp_path / 'codes'}",
                                                     "data=digits", "batch_size=64"]))
    export = train_generator(tmp_path, tok, codes, "digits_xar", *XAR_TINY)
    p = {"generator": export}
    sample(p, tmp_path / "s", *FLOW, "classes=[0,9]", "n_per_condition=2")
    assert json.loads((tmp_path / "s" / "labels.json").read_text()) == [0, 0, 9, 9]
    with np.load(tmp_path / "s" / "samples.npz") as data:
        assert data["arr_0"].shape == (4, 32, 32, 3)
    with pytest.raises(ValueError, match="class id 10 is out of range"):
        sample(p, tmp_path / "bad", *FLOW, "classes=[10]")

