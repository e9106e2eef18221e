"""Generator stage end to end: codes -> argen-train stage=generator -> export -> argen-sample."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from argen.cli.common import ConfigError, compose_config
from argen.core import IncompatibleError
from argen.pipeline import check_vocabulary
from argen.cli.sample import run as sample_run
from argen.cli.tokenize import run as tokenize_run
from argen.cli.train import run as train_run
from tests.conftest import REPO, cli_env
from tests.e2e.test_tokenize_and_bad_input import export_tokenizer, tokenize
from tokenizers_vq.io import load_pretrained

RASTER_TINY = ["generator=raster_nano", "generator.dim=32", "generator.n_layer=1", "generator.n_head=2",
               "generator.multiple_of=16"]
GEN_TINY = ["trainer.max_steps=4", "trainer.val_check_interval=2",
            "data.global_batch_size=8", "data.eval_batch_size=8", "logger=none", "callbacks.progress=null",
            "trainer.enable_model_summary=false"]
TEXT_TINY = ["generator.condition.encoder.dim=16", "generator.condition.encoder.n_layer=1",
             "generator.condition.encoder.n_head=2"]


def train_generator(root: Path, tokenizer: Path, codes: Path, experiment: str, *extra: str) -> Path:
    """Train ``experiment`` for a few steps; a tiny raster GPT unless ``extra`` picks a generator."""
    model = [] if any(e.startswith("generator=") for e in extra) else RASTER_TINY
    cfg = compose_config("train", [f"experiment={experiment}", f"paths.output_root={root}",
                                   f"tokenizer_path={tokenizer}", f"codes_dir={codes}", *model, *GEN_TINY, *extra])
    return Path(train_run(cfg)["export_dir"])


def shapes_pipeline(root: Path, export: Callable[[Path, int], Path], experiment: str, *extra: str) -> dict[str, Path]:
    """A tokenizer export (``export(path, seed)``), its shapes codes, and ``experiment`` trained a few steps on them."""
    tok = export(root / "tok", 0)
    codes = tokenize(root, tok)
    return {"root": root, "tokenizer": tok, "codes": codes,
            "generator": train_generator(root, tok, codes, experiment, *extra)}


@pytest.fixture(scope="module")
def text_pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return shapes_pipeline(tmp_path_factory.mktemp("text"), export_tokenizer, "shapes_raster", *TEXT_TINY)


@pytest.fixture(scope="module")
def class_pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("class")
    tok = export_tokenizer(root / "tok", 0)
    cfg = compose_config("tokenize", [f"tokenizer_path={tok}", f"output_dir={root / 'codes'}", "data=digits",
                                      "batch_size=64"])
    codes = tokenize_run(cfg)
    return {"root": root, "tokenizer": tok, "codes": codes,
            "generator": train_generator(root, tok, codes, "digits_raster")}


def sample(p: dict[str, Path], out: Path, *extra: str) -> dict:
    cfg = compose_config("sample", [f"generator_path={p['generator']}", f"output_dir={out}", "device=cpu",
                                    "batch_size=4", *extra])
    return sample_run(cfg)


def test_text_generator_trains_exports_and_samples(text_pipeline: dict[str, Path], tmp_path: Path) -> None:
    export = text_pipeline["generator"]
    meta = json.loads((export / "meta.json").read_text())
    assert meta["kind"] == "generator" and meta["layout"]["shapes"] == [[8, 8]]
    assert meta["tokenizer"]["sha256"] == json.loads((text_pipeline["tokenizer"] / "meta.json").read_text())["sha256"]
    generator = load_pretrained(export)
    assert generator.vocab_size == 16 and "circle" in generator.cls_embedding.encoder.vocab  # filled from the cache
    settings = sample(text_pipeline, tmp_path / "s", "prompts=[a photo of a red circle,a photo of two squares]",
                      "n_per_condition=3")
    out = tmp_path / "s"
    with np.load(out / "samples.npz") as data:
        arr = data["arr_0"]
    assert arr.shape == (6, 32, 32, 3) and arr.dtype == np.uint8
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(6)]
    assert (out / "grid.png").is_file() and settings["num_images"] == 6
    written = json.loads((out / "settings.json").read_text())
    assert written["sampler"]["cfg_scale"] == 2.0 and written["stats"]["forward_passes_per_image"] == 64
    assert written["config"]["seed"] == 0 and written["tokenizer"]["sha256"] == meta["tokenizer"]["sha256"]
    with pytest.raises(FileExistsError, match="overwrite=true"):
        sample(text_pipeline, out, "prompts=[a photo of a red circle]")
    sample(text_pipeline, out, "prompts=[a photo of a red circle]", "overwrite=true", "n_per_condition=1")
    with np.load(out / "samples.npz") as data:
        assert data["arr_0"].shape[0] == 1


def test_images_do_not_depend_on_batch_size(text_pipeline: dict[str, Path], tmp_path: Path) -> None:
    prompts = "prompts=[a photo of a red circle,a photo of a blue square,a photo of three triangles]"
    sample(text_pipeline, tmp_path / "b1", prompts, "n_per_condition=2", "batch_size=1")
    sample(text_pipeline, tmp_path / "b5", prompts, "n_per_condition=2", "batch_size=5")
    with np.load(tmp_path / "b1" / "samples.npz") as a, np.load(tmp_path / "b5" / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])
        assert not np.array_equal(a["arr_0"][0], a["arr_0"][1])  # different seeds per index


def test_suite_sampling_writes_geneval_layout_and_scores_it(text_pipeline: dict[str, Path], tmp_path: Path) -> None:
    settings = sample(text_pipeline, tmp_path / "suite", "suite=shapes", "suite_per_tag=1", "n_per_condition=2",
                      "eval=shapes")
    prompts = sorted((tmp_path / "suite" / "geneval").iterdir())
    assert len(prompts) >= 6 and len(list((prompts[0] / "samples").iterdir())) == 2
    evaluation = settings["evaluation"]
    assert 0.0 <= evaluation["overall"] <= 1.0 and set(evaluation["task_scores"]) >= {"counting", "position"}


def test_class_generator_samples_and_bad_inputs(class_pipeline: dict[str, Path], tmp_path: Path) -> None:
    sample(class_pipeline, tmp_path / "ok", "classes=[0,9]", "n_per_condition=2")
    assert json.loads((tmp_path / "ok" / "labels.json").read_text()) == [0, 0, 9, 9]
    with pytest.raises(ValueError, match="class id 10 is out of range"):
        sample(class_pipeline, tmp_path / "bad", "classes=[1,10]")
    assert not (tmp_path / "bad" / "settings.json").exists()
    with pytest.raises(ConfigError, match="class-conditional"):
        sample(class_pipeline, tmp_path / "bad", "prompts=[a photo of a dog]")



def test_missing_prompt_file_is_a_clear_error(text_pipeline: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        sample(text_pipeline, tmp_path / "bad", f"prompt_file={tmp_path / 'nowhere.txt'}")


def test_vocabulary_mismatch_is_refused(class_pipeline: dict[str, Path], tmp_path: Path) -> None:
    generator = load_pretrained(class_pipeline["generator"])
    other = load_pretrained(export_tokenizer(tmp_path / "tok32", 1))
    other.layout = type(other.layout)(kind="grid", shapes=((8, 8),), vocab_size=32)
    with pytest.raises(ValueError, match="vocabulary mismatch: the tokenizer has 32 codes, the generator predicts 16"):
        check_vocabulary(other, generator)
    # in training: a generator vocabulary that disagrees with the code cache
    with pytest.raises(ConfigError, match="vocabulary mismatch"):
        train_generator(tmp_path, class_pipeline["tokenizer"], class_pipeline["codes"], "digits_raster",
                        "generator.vocab_size=99")
    # in sampling: a tokenizer other than the one the generator's codes came from
    with pytest.raises(ConfigError, match="is not the one the generator was trained with"):
        sample(class_pipeline, tmp_path / "s", "classes=[1]", f"tokenizer_path={tmp_path / 'tok32'}")


def test_generator_resume_continues(class_pipeline: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "r"
    args = (root, class_pipeline["tokenizer"], class_pipeline["codes"], "digits_raster")
    train_generator(*args, "trainer.max_steps=2")
    ckpt = torch.load(root / "runs" / "digits_raster" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["ema"] is not None
    train_generator(*args, "trainer.max_steps=4")  # resume=auto picks up last.ckpt
    ckpt = torch.load(root / "runs" / "digits_raster" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4


@pytest.mark.multiprocess
def test_two_processes_write_the_same_images_as_one(class_pipeline: dict[str, Path], tmp_path: Path) -> None:
    common = [f"generator_path={class_pipeline['generator']}", "classes=[0,3,7]", "n_per_condition=3",
              "device=cpu", "batch_size=2"]
    sample(class_pipeline, tmp_path / "one", *common[1:])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "argen.cli.sample", *common, f"output_dir={tmp_path / 'two'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    settings = json.loads((tmp_path / "two" / "settings.json").read_text())
    assert settings["processes"] == 2 and settings["num_images"] == 9
    with np.load(tmp_path / "one" / "samples.npz") as a, np.load(tmp_path / "two" / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])


def test_multirun_sweep_writes_a_summary(text_pipeline: dict[str, Path], tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "argen.cli.sample", "-m", f"generator_path={text_pipeline['generator']}",
           "suite=shapes", "suite_per_tag=1", "n_per_condition=1", "eval=shapes", "device=cpu",
           f"paths.output_root={tmp_path}", "name=sweep", "sampler.cfg_scale=1.0,3.0"]
    proc = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "samples" / "sweep_sweep"
    rows = json.loads((sweep / "summary.json").read_text())
    assert sorted(r["sampler.cfg_scale"] for r in rows) == ["1.0", "3.0"]
    assert all(0.0 <= r["overall"] <= 1.0 for r in rows)
    assert (sweep / "summary.md").is_file() and (sweep / "summary.png").is_file()


VAR_TINY = ["generator=var_nano", "generator.depth=1", "generator.width=16", "generator.n_head=2"]


@pytest.fixture(scope="module")
def var_pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.fixtures import export_msvq_tokenizer

    return shapes_pipeline(tmp_path_factory.mktemp("var"), export_msvq_tokenizer, "shapes_var", *TEXT_TINY, *VAR_TINY)


def test_var_trains_on_scale_codes_exports_and_samples(var_pipeline: dict[str, Path], tmp_path: Path) -> None:
    export = var_pipeline["generator"]
    meta = json.loads((export / "meta.json").read_text())
    assert meta["layout"]["kind"] == "scales" and meta["layout"]["shapes"] == [[1, 1], [2, 2], [4, 4], [8, 8]]
    generator = load_pretrained(export)
    assert generator.scales == (1, 2, 4, 8) and generator.input_dim == 4  # filled from the cache and tokenizer
    settings = sample(var_pipeline, tmp_path / "s", "sampler=var", "suite=shapes", "suite_per_tag=1",
                      "n_per_condition=1", "eval=shapes")
    written = json.loads((tmp_path / "s" / "settings.json").read_text())
    assert written["stats"]["forward_passes_per_image"] == 4  # one pass per scale
    assert written["sampler"]["cfg_schedule"] == "linear" and written["sampler"]["cfg_scale"] == 2.5
    assert 0.0 <= settings["evaluation"]["overall"] <= 1.0
    with np.load(tmp_path / "s" / "samples.npz") as data:
        assert data["arr_0"].shape[1:] == (32, 32, 3)


def test_var_refuses_grid_codes_and_grid_generators_refuse_scale_codes(var_pipeline: dict[str, Path],
                                                                        text_pipeline: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds grid tokens"):
        train_generator(tmp_path, text_pipeline["tokenizer"], text_pipeline["codes"], "shapes_var", *TEXT_TINY,
                        *VAR_TINY)
    with pytest.raises(ConfigError, match="scale-residual tokens"):
        train_generator(tmp_path, var_pipeline["tokenizer"], var_pipeline["codes"], "shapes_raster", *TEXT_TINY)
    with pytest.raises(ValueError, match="layout mismatch"):
        check_vocabulary(load_pretrained(var_pipeline["tokenizer"]), load_pretrained(text_pipeline["generator"]))


def test_sjd_sampler_through_argen_sample(text_pipeline: dict[str, Path], var_pipeline: dict[str, Path],
                                          tmp_path: Path) -> None:
    prompts = "prompts=[a photo of a red circle,a photo of two squares]"
    sample(text_pipeline, tmp_path / "anc", prompts, "n_per_condition=2")
    sample(text_pipeline, tmp_path / "w1", prompts, "n_per_condition=2", "sampler=sjd", "sampler.window=1")
    with np.load(tmp_path / "anc" / "samples.npz") as a, np.load(tmp_path / "w1" / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])  # window 1 is ancestral sampling
    sample(text_pipeline, tmp_path / "sjd", prompts, "n_per_condition=2", "sampler=sjd", "sampler.window=8")
    written = json.loads((tmp_path / "sjd" / "settings.json").read_text())
    assert written["sampler"]["sampler"] == "sjd" and written["sampler"]["window"] == 8
    assert written["stats"]["forward_passes_per_image"] <= 64
    with pytest.raises(IncompatibleError, match="VARGenerator"):
        sample(var_pipeline, tmp_path / "var", "prompts=[a photo of a red circle]", "sampler=sjd")
    sample(text_pipeline, tmp_path / "lantern", prompts, "sampler=lantern_jacobi", "sampler.lantern_k=4",
           "sampler.lantern_delta=0.2")
    written = json.loads((tmp_path / "lantern" / "settings.json").read_text())
    assert written["sampler"]["sampler"] == "lantern_jacobi" and written["sampler"]["k"] == 4
    assert 0.0 <= written["stats"]["max_tvd"] <= 0.2 + 1e-6  # float32


def test_drafter_distills_trains_and_drives_speculative_sampling(text_pipeline: dict[str, Path],
                                                                 class_pipeline: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    from argen.cli.distill import run as distill_run

    cfg = compose_config("distill", [f"generator_path={text_pipeline['generator']}",
                                     f"codes_dir={text_pipeline['codes']}", f"output_dir={tmp_path / 'distilled'}",
                                     "splits={train: 24, val: 8}", "batch_size=16", "sampler.cfg_scale=3.0"])
    distilled = distill_run(cfg)
    manifest = json.loads((distilled / "manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 24 and manifest["preprocessing"]["distilled"]["sampler"]
    train = compose_config("train", ["experiment=shapes_raster_drafter", f"paths.output_root={tmp_path}",
                                     f"target_path={text_pipeline['generator']}", f"codes_dir={distilled}",
                                     *GEN_TINY])
    drafter = Path(train_run(train)["export_dir"])
    meta = json.loads((drafter / "meta.json").read_text())
    target_meta = json.loads((text_pipeline["generator"] / "meta.json").read_text())
    assert meta["target"]["sha256"] == target_meta["sha256"]
    prompts = "prompts=[a photo of a red circle,a photo of two squares]"
    sample(text_pipeline, tmp_path / "anc", prompts, "n_per_condition=2")
    sample(text_pipeline, tmp_path / "d0", prompts, "n_per_condition=2", "sampler=speculative",
           f"sampler.drafter={drafter}", "sampler.draft_len=0")
    with np.load(tmp_path / "anc" / "samples.npz") as a, np.load(tmp_path / "d0" / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])  # no drafts is ancestral sampling
    sample(text_pipeline, tmp_path / "lantern", prompts, "sampler=speculative_lantern", f"sampler.drafter={drafter}",
           "sampler.lantern_k=4", "sampler.lantern_delta=0.2")
    written = json.loads((tmp_path / "lantern" / "settings.json").read_text())
    assert written["sampler"]["sampler"] == "speculative_lantern" and written["sampler"]["window"] == 5
    assert 0.0 <= written["stats"]["max_tvd"] <= 0.2 + 1e-6  # float32
    with pytest.raises(ConfigError, match="drafter was trained for generator"):
        sample(class_pipeline, tmp_path / "other", "classes=[1]", "sampler=speculative", f"sampler.drafter={drafter}")
    with pytest.raises(ConfigError, match="target_path .* is not an exported generator"):
        train_run(compose_config("train", ["experiment=shapes_raster_drafter", f"paths.output_root={tmp_path}",
                                           f"target_path={tmp_path / 'nothing'}", f"codes_dir={distilled}",
                                           "name=bad", *GEN_TINY]))


def test_bench_sampling_sweeps_samplers_on_a_trained_generator(text_pipeline: dict[str, Path], tmp_path: Path) -> None:
    from tests.unit.test_bench_sampling import load_script

    bench = load_script()
    out = tmp_path / "bench"
    report = bench.main(["--out", str(out), "--trained", str(text_pipeline["generator"]), "--suite-per-tag", "1",
                         "--n-per-prompt", "1", "--fd-prompts", "0", "--threads", "1",
                         "--sweep", "ancestral; sjd:window=4; lantern_jacobi:window=4,k=4,delta=0.2"])
    runs = {r["setting"]: r for r in report["runs"]}
    assert set(runs) == {"ancestral", "sjd[window=4]", "lantern_jacobi[window=4,k=4,delta=0.2]"}
    assert runs["ancestral"]["forward_passes_per_image"] == 64 and runs["ancestral"]["passes_vs_ancestral"] == 1.0
    sjd = runs["sjd[window=4]"]
    assert sjd["sampler"] == "sjd" and sjd["window"] == 4 and sjd["drafts_per_pass"] == 3 and sjd["batch"] == 1
    assert sjd["forward_passes_per_image"] * sjd["accepted_per_pass"] == 64
    assert sjd["passes_vs_ancestral"] == 64 / sjd["forward_passes_per_image"]
    assert 0.0 <= sjd["shapes_overall"] <= 1.0 and sjd["quality_batches"] == {"shapes_overall": 1}
    lantern = runs["lantern_jacobi[window=4,k=4,delta=0.2]"]
    assert lantern["k"] == 4 and lantern["delta"] == 0.2 and 0.0 <= lantern["max_tvd"] <= 0.2 + 1e-6
    assert (out / "speculative.png").is_file() and (out / "sampling.json").is_file()
    with pytest.raises(SystemExit, match="unknown sampler"):
        bench.main(["--out", str(out), "--trained", str(text_pipeline["generator"]), "--sweep", "beam:width=2"])
    with pytest.raises(SystemExit, match="needs --drafter"):
        bench.main(["--out", str(out), "--trained", str(text_pipeline["generator"]), "--sweep", "speculative"])
