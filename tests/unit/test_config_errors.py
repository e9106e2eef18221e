"""Errors that point the right way: each names the config key to change and how to change it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from argen.cli.common import ConfigError, build, compose_config, pick_device
from argen.cli.evaluate import run as eval_run
from argen.cli.sample import run as sample_run
from argen.core import IncompatibleError
from tests.fixtures import VAR_TINY, export_generator, export_msvq_tokenizer


@pytest.fixture(scope="module")
def var_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny class-conditional VAR export with its scale-residual tokenizer."""
    root = tmp_path_factory.mktemp("var")
    return export_generator(root / "gen", VAR_TINY, export_msvq_tokenizer(root / "tok", 0))


def test_config_error_is_one_class_from_core() -> None:
    """The library raises argen.core's ConfigError; argen.cli.common names the same class (tests, scripts)."""
    import argen.cli.common
    import argen.core.errors
    import argen.core.protocols

    assert argen.cli.common.ConfigError is argen.core.errors.ConfigError
    assert argen.core.protocols.IncompatibleError is argen.core.errors.IncompatibleError is IncompatibleError


def sample_cfg(generator: Path, out: Path, *extra: str) -> DictConfig:
    return compose_config("sample", [f"generator_path={generator}", f"output_dir={out}", "device=cpu",
                                     "classes=[0]", "n_per_condition=1", f"paths.output_root={out}", *extra])


# ---- build: values are checked against the constructor's annotations -------------------------------
def test_a_wrong_value_names_the_key_and_the_type(tmp_path: Path) -> None:
    cfg = compose_config("sample", ["generator_path=x", "sampler.cfg_scale=high", f"paths.output_root={tmp_path}"])
    with pytest.raises(ConfigError) as info:
        build(cfg.sampler, "sampler")
    assert "`sampler.cfg_scale` must be float (got 'high', str)" in str(info.value)
    assert "Check the keys" not in str(info.value)  # every key is right; one value is not


def test_an_unknown_key_lists_the_accepted_ones(tmp_path: Path) -> None:
    cfg = compose_config("sample", ["generator_path=x", "+sampler.foo=1", f"paths.output_root={tmp_path}"])
    with pytest.raises(ConfigError) as info:
        build(cfg.sampler, "sampler")
    message = str(info.value)
    assert "unknown key `sampler.foo`; `AncestralSampler` accepts: " in message
    assert "cfg_scale, cfg_schedule" in message


def test_nested_partial_nodes_and_list_items_are_checked() -> None:
    bad_class = {**VAR_TINY, "condition": {**VAR_TINY["condition"], "num_classes": "ten"}}
    with pytest.raises(ConfigError, match=r"`generator\.condition\.num_classes` must be int \(got 'ten', str\)"):
        build(bad_class, "generator")
    with pytest.raises(ConfigError, match=r"`generator\.scales\[1\]` must be int \(got 'two', str\)"):
        build({**VAR_TINY, "scales": [1, "two"]}, "generator")
    with pytest.raises(ConfigError, match=r"`generator\.condition\.dropout` must be float \(got True, bool\)"):
        build({**VAR_TINY, "condition": {**VAR_TINY["condition"], "dropout": True}}, "generator")
    build({**VAR_TINY, "mlp_ratio": 4, "drop_path_rate": None}, "generator")  # int for float, None for Optional


# ---- missing files name the real key and how to make them -----------------------------------------
def test_missing_inception_weights_name_the_real_key(tmp_path: Path) -> None:
    cfg = compose_config("evaluate", ["eval=fid", "samples=x.npz", "eval.reference=y.npz",
                                      f"paths.weights_dir={tmp_path}", f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(ConfigError) as info:
        eval_run(cfg)
    message = str(info.value)
    assert "`eval.extractor.weights_path`" in message and "eval.inception" not in message
    assert "weights-inception-2015-12-05-6726825d.pth" in message and "Check the keys" not in message


@pytest.mark.parametrize("kind", ["shapes", "digits"])
def test_missing_feature_net_says_how_to_make_it(kind: str, tmp_path: Path) -> None:
    net = tmp_path / "nets" / kind
    cfg = compose_config("evaluate", [f"eval=fd_{kind}", "samples=x.npz", f"eval.extractor.path={net}",
                                      f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(ConfigError) as info:
        eval_run(cfg)
    message = str(info.value)
    assert f"python -m argen.eval.feature_nets {kind} --out {net}" in message
    assert "`eval.extractor.path`" in message and "argen-export" not in message


# ---- argen-sample: its own keys, the device, sampler x generator ----------------------------------
@pytest.mark.parametrize(("override", "expected"), [
    ("n_per_condition=four", "`n_per_condition` must be an integer >= 1 (got 'four')"),
    ("batch_size=0", "`batch_size` must be an integer >= 1 (got 0)"),
    ("seed=abc", "`seed` must be an integer (got 'abc')"),
    ("save_npz=maybe", "`save_npz` must be true or false (got 'maybe')"),
])
def test_sample_keys_are_checked_by_name(override: str, expected: str, var_export: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        sample_run(sample_cfg(var_export, tmp_path, override))
    assert expected in str(info.value)
    assert not (tmp_path / "images").exists()  # refused before anything was written


def test_cuda_without_a_gpu_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="no CUDA device is available.*device=cpu or device=auto"):
            pick_device(name)
    assert pick_device("auto") == torch.device("cpu")


def test_speculative_with_var_names_the_incompatibility_not_the_drafter(var_export: Path, tmp_path: Path) -> None:
    with pytest.raises(IncompatibleError) as info:
        sample_run(sample_cfg(var_export, tmp_path, "sampler=speculative"))
    message = str(info.value)
    assert "sampler SpeculativeSampler needs chain, rollback, ragged, features but generator VARGenerator" in message
    assert "drafter" not in message
