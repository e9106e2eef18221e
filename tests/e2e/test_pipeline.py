"""argen.pipeline: the library API over an export (the tiny exports of test_generator_pipeline), its
images equal to argen-sample's, tokenizers bound where generators and samplers need them, and clear
errors for a wrong tokenizer or wrong conditions."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from argen.cli.common import ConfigError
from argen.core import Condition
from argen.pipeline import Pipeline, decode
from argen.samplers.random import sample_seeds
from tests.conftest import REPO
from tests.e2e.test_generator_pipeline import class_pipeline, sample, text_pipeline, var_pipeline  # noqa: F401
from tests.e2e.test_tokenize_and_bad_input import export_tokenizer
from tokenizers_vq.io import load_pretrained

# The README's "Library use" example, as a user types it.
README_EXAMPLE = '''from argen.pipeline import Pipeline
pipe = Pipeline.from_export("outputs/quickstart/runs/shapes_raster/export")
pipe(["a photo of a red circle", "a photo of two blue squares"], n=4, seed=0).grid().save("grid.png")
'''
PROMPTS = ["a photo of a red circle", "a photo of two squares", "a photo of a blue triangle"]


def npz(folder: Path) -> np.ndarray:
    with np.load(folder / "samples.npz") as data:
        return data["arr_0"]


def cli_prompts(prompts: list[str]) -> str:
    return "prompts=[" + ",".join(prompts) + "]"


# ---- (a) the README example -----------------------------------------------------------------------
def test_the_readme_example_runs_as_written(text_pipeline: dict[str, Path], tmp_path: Path,  # noqa: F811
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(text_pipeline["generator"], tmp_path / "outputs" / "quickstart" / "runs" / "shapes_raster" /
                    "export")
    monkeypatch.chdir(tmp_path)
    exec(compile(README_EXAMPLE, "README.md", "exec"), {})  # noqa: S102  (the example, verbatim)
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (4 * 34 + 2, 2 * 34 + 2)  # a prompt's 4 samples a row, 32 px images, 2 px gaps
    readme = (REPO / "README.md").read_text()
    if "from argen.pipeline import" in readme:  # once the README shows it, it shows this example
        assert README_EXAMPLE in readme


# ---- (b) the same images as argen-sample ------------------------------------------------------------
def test_pipeline_images_equal_argen_sample_bit_for_bit(text_pipeline: dict[str, Path],  # noqa: F811
                                                        tmp_path: Path) -> None:
    out = tmp_path / "cli"
    sample(text_pipeline, out, cli_prompts(PROMPTS), "n_per_condition=3", "seed=5")
    reference = npz(out)
    pipe = Pipeline.from_export(text_pipeline["generator"])
    samples = pipe(PROMPTS, n=3, seed=5, batch_size=4)
    assert samples.images.dtype == np.uint8 and samples.images.shape == (9, 32, 32, 3)
    assert np.array_equal(samples.images, reference)
    assert samples.conditions == [p for p in PROMPTS for _ in range(3)] and samples.indices == list(range(9))
    with Image.open(out / "grid.png") as grid:
        assert np.array_equal(np.asarray(samples.grid().convert("RGB")), np.asarray(grid.convert("RGB")))
    assert [np.asarray(im) for im in samples.pil()][4].tobytes() == reference[4].tobytes()
    assert samples.stats.images == 9 and samples.stats.forward_passes_per_image == 64
    alone = pipe.sampler.sample(pipe.generator, Condition(texts=[PROMPTS[1]]), seeds=sample_seeds(5, [4]))
    assert np.array_equal(decode(pipe.tokenizer, alone.tokens, 1)[0], reference[4])  # index 4: prompt 1, its seed
    some = pipe(PROMPTS, n=3, seed=5, indices=[7, 2], batch_size=1)  # any subset, any batch: the same images
    assert np.array_equal(some.images, reference[[7, 2]]) and some.conditions == [PROMPTS[2], PROMPTS[0]]
    jacobi = pipe.with_sampler("sjd", window=1)(PROMPTS, n=3, seed=5)  # window 1 is ancestral sampling
    assert np.array_equal(jacobi.images, reference)
    assert not np.array_equal(pipe(PROMPTS, n=3, seed=6).images, reference)


def test_class_pipeline_images_equal_argen_sample(class_pipeline: dict[str, Path],  # noqa: F811
                                                  tmp_path: Path) -> None:
    sample(class_pipeline, tmp_path / "cli", "classes=[0,9]", "n_per_condition=2", "sampler.cfg_scale=3.0")
    pipe = Pipeline.from_export(class_pipeline["generator"], sampler="ancestral", sampler_options={"cfg_scale": 3.0})
    settings = json.loads((tmp_path / "cli" / "settings.json").read_text())
    assert pipe.sampler.settings() == settings["sampler"] and settings["sampler"]["cfg_scale"] == 3.0
    samples = pipe([0, 9], n=2)
    assert np.array_equal(samples.images, npz(tmp_path / "cli")) and samples.conditions == [0, 0, 9, 9]


# ---- (c) VAR: its tokenizer bound ---------------------------------------------------------------------
def test_var_export_samples_with_its_tokenizer_bound(var_pipeline: dict[str, Path],  # noqa: F811
                                                     tmp_path: Path) -> None:
    pipe = Pipeline.from_export(var_pipeline["generator"], sampler="var")
    assert pipe.generator.residual(pipe.device) is pipe.tokenizer.quantize  # bound: VAR's accumulate step
    samples = pipe(PROMPTS[:2], n=2, seed=1)
    assert samples.images.shape == (4, 32, 32, 3) and samples.stats.forward_passes_per_image == 4  # 4 scales
    sample(var_pipeline, tmp_path / "cli", cli_prompts(PROMPTS[:2]), "n_per_condition=2", "seed=1", "sampler=var")
    assert np.array_equal(samples.images, npz(tmp_path / "cli"))


def test_lantern_sampler_gets_the_tokenizer(text_pipeline: dict[str, Path]) -> None:  # noqa: F811
    pipe = Pipeline.from_export(text_pipeline["generator"]).with_sampler("lantern_jacobi", window=4, lantern_k=4,
                                                                          lantern_delta=0.2)
    samples = pipe(PROMPTS[:1], n=1)
    assert samples.images.shape == (1, 32, 32, 3) and 0.0 <= samples.stats.bounds["max_tvd"] <= 0.2 + 1e-6


# ---- (d) a wrong tokenizer= --------------------------------------------------------------------------
def test_a_wrong_tokenizer_is_refused_naming_it(text_pipeline: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    other = export_tokenizer(tmp_path / "other_tok", 1)  # same layout, other weights
    with pytest.raises(ConfigError, match=rf"tokenizer={re.escape(str(other))} .*is not the one the generator was "
                                          rf"trained with"):
        Pipeline.from_export(text_pipeline["generator"], tokenizer=other)
    with pytest.raises(FileNotFoundError, match=rf"tokenizer={re.escape(str(tmp_path))} is not an exported tokenizer"):
        Pipeline.from_export(text_pipeline["generator"], tokenizer=tmp_path)
    wide = load_pretrained(other)
    wide.layout = type(wide.layout)(kind="grid", shapes=((8, 8),), vocab_size=32)
    with pytest.raises(ConfigError, match=r"tokenizer=.*vocabulary mismatch: the tokenizer has 32 codes"):
        Pipeline.from_export(text_pipeline["generator"], tokenizer=wide)
    same = Pipeline.from_export(text_pipeline["generator"], tokenizer=text_pipeline["tokenizer"])  # the right one
    assert same.info is not None and same.info.tokenizer_path == str(text_pipeline["tokenizer"])
    module = Pipeline.from_export(text_pipeline["generator"], tokenizer=load_pretrained(text_pipeline["tokenizer"]))
    assert module.info is not None and module.info.tokenizer_path is None  # a module: layout checked, not sha256
    assert np.array_equal(module(PROMPTS[:1]).images, same(PROMPTS[:1]).images)


# ---- (e) conditions the generator does not take ---------------------------------------------------------
def test_wrong_conditions_are_clear_errors(class_pipeline: dict[str, Path],  # noqa: F811
                                           text_pipeline: dict[str, Path]) -> None:  # noqa: F811
    digits = Pipeline.from_export(class_pipeline["generator"])
    with pytest.raises(ValueError, match=r"class id 10 is out of range: the generator has 10 classes \(ids 0..9\)"):
        digits([1, 10])
    with pytest.raises(ValueError, match=r"class-conditional \(10 classes\): pass class ids 0..9, not prompts"):
        digits(["a photo of a dog"])
    shapes = Pipeline.from_export(text_pipeline["generator"])
    with pytest.raises(ValueError, match="text-conditional: pass prompts"):
        shapes([3])
    with pytest.raises(TypeError, match="one kind per request"):
        shapes(["a red circle", 3])
    with pytest.raises(ValueError, match=r"sample index 4 is out of range: 2 conditions x n=2"):
        shapes(PROMPTS[:2], n=2, indices=[4])


def test_a_stochastic_decoder_gets_each_samples_own_seed(text_pipeline: dict[str, Path]) -> None:  # noqa: F811
    """Tokenizer.decode(tokens, seeds): the pipeline hands every image its own decoder seed, the same
    whatever batch it was drawn or decoded in (a rectified-flow decoder draws its noise from it)."""
    from argen.samplers.random import decoder_seeds

    pipe = Pipeline.from_export(text_pipeline["generator"])
    seen: dict[int, int] = {}
    inner = pipe.tokenizer.decode

    def recording(tokens, seeds=None):  # noqa: ANN001, ANN202
        assert seeds is not None and len(seeds) == len(tokens)
        return inner(tokens, seeds)

    pipe.tokenizer.decode = recording
    got = []
    pipe.stream(["a red circle", "two squares"], n=3, seed=4, batch_size=2, decode_batch_size=2,
                on_images=lambda ids, ims: got.extend(ids))
    assert sorted(got) == list(range(6))
    assert torch.equal(decoder_seeds(4, [5]), decoder_seeds(4, range(6))[5:])
    assert not torch.equal(decoder_seeds(4, range(6)), sample_seeds(4, range(6)))
    calls: list[torch.Tensor] = []
    pipe.tokenizer.decode = lambda tokens, seeds=None: (calls.append(seeds), inner(tokens))[1]
    pipe.stream(["a red circle"], n=2, seed=4, indices=[1, 0], batch_size=1, decode_batch_size=1,
                on_images=lambda ids, ims: seen.update({i: 0 for i in ids}))
    assert sorted(torch.cat(calls).tolist()) == sorted(decoder_seeds(4, [0, 1]).tolist())
