"""Every config composes and instantiates; bad keys fail early with a clear message."""

from __future__ import annotations

import contextlib

import subprocess
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from PIL import Image

from argen.cli.common import CONFIG_DIR, ConfigError, build, compose_config
from argen.cli.train import build_stage
from tests.conftest import cli, cli_env
from tests.fixtures import fake_lpips_files

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (Path(CONFIG_DIR) / "trainer").glob("*.yaml"))


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "images" / "cls"
    root.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (40, 40), (i * 100, 50, 50)).save(root / f"{i}.png")
    return tmp_path / "images"


GENERATOR_EXPERIMENTS = ("shapes_raster", "shapes_raster_quick", "shapes_best", "digits_raster", "shapes_var",
                         "digits_var", "shapes_var_quick", "shapes_nar", "digits_nar", "shapes_ts",
                         "shapes_ts128", "shapes_xar", "shapes_xar_token", "shapes_xar_subsample",
                         "shapes_xar_scale", "shapes_xar_image", "digits_xar", "shapes_flextok_ar")


def tiny_code_cache(root: Path, data: str, scales: bool = False, continuous: bool = False,
                    flextok: bool = False) -> list[str]:
    from argen.cli.tokenize import run as tokenize_run
    from tests.e2e.test_tokenize_and_bad_input import export_tokenizer
    from tests.fixtures import export_flextok_tokenizer, export_kl_tokenizer, export_msvq_tokenizer

    make = export_kl_tokenizer if continuous else export_msvq_tokenizer if scales else \
        export_flextok_tokenizer if flextok else export_tokenizer
    tok = make(root / "tok", 0)
    sizes = ["data.train.size=16", "data.val.size=8"] if data == "shapes" else []
    tokenize_run(compose_config("tokenize", [f"tokenizer_path={tok}", f"output_dir={root / 'codes'}", f"data={data}",
                                             *sizes]))
    return [f"tokenizer_path={tok}", f"codes_dir={root / 'codes'}"]


@pytest.mark.parametrize(("preset", "millions", "tolerance"), [
    ("gpt_b", 111, 1.1), ("gpt_l", 343, 3.4), ("gpt_xl", 775, 7.8),  # LlamaGen's table, within 1%
    # NAR-B/L/XL 130M / 372M / 816M (GPT trunk + head B's block, norm, output), to the computed count
    ("nar_b", 130.55, 0.01), ("nar_m", 295.45, 0.01), ("nar_l", 372.54, 0.01), ("nar_xl", 815.99, 0.01)])
def test_gpt_presets_have_the_official_sizes(preset: str, millions: float, tolerance: float) -> None:
    """c2i with 16384 codes, 1000 classes, 16x16 tokens (algorithms.md 2.3, 3.6)."""
    cfg = compose_config("train", [f"generator={preset}", "generator.vocab_size=16384", "generator.grid_size=16",
                                   "generator.condition.num_classes=1000"])
    with torch.device("meta"):
        generator = build(cfg.generator, "generator")
    n = sum(p.numel() for p in generator.parameters()) / 1e6
    assert abs(n - millions) < tolerance, n
    assert len(generator.layers) == generator.n_layer + preset.startswith("nar")


@pytest.mark.parametrize(("preset", "millions"), [("var_d16", 310), ("var_d20", 600), ("var_d24", 1000),
                                                  ("var_d30", 2000)])
def test_var_presets_have_var_sizes(preset: str, millions: int) -> None:
    """VAR's table (algorithms.md 1.5): 4096 codes of width 32, 1000 classes, scales 1..16."""
    cfg = compose_config("train", [f"generator={preset}", "generator.vocab_size=4096", "generator.input_dim=32",
                                   "generator.scales=[1,2,3,4,5,6,8,10,13,16]",
                                   "generator.condition.num_classes=1000"])
    with torch.device("meta"):
        generator = build(cfg.generator, "generator")
    n = sum(p.numel() for p in generator.parameters()) / 1e6
    assert abs(n - millions) / millions < 0.04, n
    assert generator.dim == 64 * generator.depth and generator.n_head == generator.depth


@pytest.mark.parametrize(("preset", "millions"), [("xar_b", 172), ("xar_l", 608), ("xar_h", 1100)])
def test_xar_presets_have_the_papers_sizes(preset: str, millions: int) -> None:
    """xAR-B/L/H 172M / 608M / 1.1B (algorithms.md 4.3) on MAR's KL-16 latents (16x16x16), 1000 classes."""
    cfg = compose_config("train", [f"generator={preset}", "generator.grid_size=16", "generator.channels=16",
                                   "generator.condition.num_classes=1000"])
    with torch.device("meta"):
        generator = build(cfg.generator, "generator")
    n = sum(p.numel() for p in generator.parameters()) / 1e6
    assert abs(n - millions) / millions < 0.08, n
    assert generator.num_entities == 4 and len(generator.plan()[0]) == 64  # 2x2 cells of 8x8


@pytest.mark.filterwarnings("ignore:.*meta parameter")
def tiny_target(root: Path, cache: list[str]) -> Path:
    """An exported (untrained) tiny shapes_raster generator for the drafter experiments."""
    from tokenizers_vq.io import read_meta, save_pretrained

    cfg = compose_config("train", ["experiment=shapes_raster", f"paths.output_root={root}", *cache,
                                   "generator.dim=32", "generator.n_layer=1", "generator.n_head=2",
                                   "generator.multiple_of=16"])
    module, _ = build_stage(cfg)
    tokenizer = cache[0].split("=", 1)[1]
    meta = {"kind": "generator", "tokenizer": {"path": tokenizer, "sha256": read_meta(tokenizer)["sha256"]}}
    return save_pretrained(module.generator, root / "target", config=OmegaConf.to_container(cfg.generator,
                                                                                           resolve=True), meta=meta)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment: str, tmp_path: Path, image_root: Path) -> None:
    weights = tmp_path / "weights"
    fake_lpips_files(weights)
    extra = [f"+data.train.root={image_root}"] if experiment.startswith("folder") else []
    if experiment in GENERATOR_EXPERIMENTS:  # generators need a tokenizer and its code cache
        extra = tiny_code_cache(tmp_path, "digits" if experiment.startswith("digits") else "shapes",
                                scales="_var" in experiment, continuous="_xar" in experiment,
                                flextok="flextok" in experiment)
    if experiment == "shapes_flextok_kl":  # FlexTok on the latents of an exported shapes_kl tokenizer
        from tests.fixtures import export_kl_tokenizer

        export_kl_tokenizer(tmp_path / "runs" / "shapes_kl" / "export", 0)
    if experiment.endswith("_drafter"):  # drafters need the exported target (and its tokenizer's codes)
        cache = tiny_code_cache(tmp_path, "shapes")
        extra = [f"target_path={tiny_target(tmp_path, cache)}", cache[1]]
    cfg = compose_config("train", [f"experiment={experiment}", f"paths.output_root={tmp_path}",
                                   f"paths.weights_dir={weights}", *extra])
    assert cfg.name == experiment
    # full-size presets (VQ-16) without allocating their weights; FlexTok on shapes_kl reads that export's
    # weights while it is built, which meta tensors cannot hold (and it is tiny)
    loads_weights = experiment == "shapes_flextok_kl"
    with contextlib.nullcontext() if loads_weights else torch.device("meta"):
        module, datamodule = build_stage(cfg)
    model = module.generator if experiment in GENERATOR_EXPERIMENTS or "drafter" in experiment else module.tokenizer
    assert model.layout.length > 0
    assert len(datamodule.train_set) > 0
    for key, node in cfg.callbacks.items():
        if node:
            build(node, f"callbacks.{key}")


@pytest.mark.parametrize("trainer", TRAINERS)
def test_trainer_presets_instantiate(trainer: str, tmp_path: Path) -> None:
    # GPU presets are built on the CPU here: the test checks the config, not the hardware.
    cfg = compose_config("train", [f"trainer={trainer}", f"paths.output_root={tmp_path}", "trainer.accelerator=cpu",
                                   "trainer.devices=1", "trainer.precision=32-true"])
    if trainer == "fsdp":  # Lightning's FSDP refuses a CPU accelerator: build the strategy alone
        strategy = build(cfg.trainer.strategy, "trainer.strategy")
        assert type(strategy).__name__ == "FSDPStrategy"
        return
    trainer_obj = build(cfg.trainer, "trainer", logger=False, use_distributed_sampler=False, callbacks=[])
    assert trainer_obj.max_steps == cfg.trainer.max_steps


def test_other_entry_configs_compose(tmp_path: Path) -> None:
    cfg = compose_config("tokenize", ["tokenizer_path=x", f"paths.output_root={tmp_path}"])
    assert cfg.splits == ["train", "val"]
    cfg = compose_config("distill", ["generator_path=x", "codes_dir=y", f"paths.output_root={tmp_path}"])
    assert cfg.output_dir == f"{tmp_path}/codes/distilled" and cfg.sampler.cfg_scale == 2.0


@pytest.mark.parametrize("sampler", sorted(p.stem for p in (Path(CONFIG_DIR) / "sampler").glob("*.yaml")))
def test_every_sampler_config_builds(sampler: str, tmp_path: Path) -> None:
    cfg = compose_config("sample", ["generator_path=x", f"sampler={sampler}", f"paths.output_root={tmp_path}"])
    if "drafter" in cfg.sampler:  # needs a trained drafter: the missing one is named
        with pytest.raises(ConfigError, match="not an exported drafter"):
            build(cfg.sampler, "sampler")
        return
    built = build(cfg.sampler, "sampler")
    assert built.settings()["sampler"] in (sampler, "ancestral")
    assert compose_config("export", ["run_dir=x"]).weights == "ema"


def test_unknown_key_fails_with_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException, match="codebok_size"):
        compose_config("train", ["tokenizer.codebok_size=12", f"paths.output_root={tmp_path}"])


def test_unknown_constructor_argument_names_the_node(tmp_path: Path) -> None:
    cfg = compose_config("train", ["+tokenizer.codebok_size=12", f"paths.output_root={tmp_path}"])
    with pytest.raises(ConfigError, match="`tokenizer`.*codebok_size"):
        build_stage(cfg)


def test_cli_unknown_key_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run([*cli("argen-train"), "tokenizer.codebok_size=12", f"paths.output_root={tmp_path}"],
                          capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode != 0
    assert "codebok_size" in proc.stderr and "not in struct" in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started
