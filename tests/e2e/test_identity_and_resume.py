"""Identities depend only on content; paths stay valid from any folder; a resume never corrupts a run."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from argen.cli.common import ConfigError, compose_config
from argen.cli.sample import run as sample_run
from argen.cli.train import run as train_run
from argen.io.export import export_run
from argen.training.resume import check_resume_config
from tests.conftest import TINY, cli, cli_env
from tests.e2e.test_generator_pipeline import GEN_TINY, RASTER_TINY, TEXT_TINY
from tests.e2e.test_tokenize_and_bad_input import export_tokenizer, tokenize
from tokenizers_vq.io import file_sha256, read_meta, save_pretrained, save_safetensors

BASE = ["experiment=shapes_vq", *TINY, "data.train.size=64", "trainer.max_steps=24",
        "callbacks.checkpoint.every_n_train_steps=4", "callbacks.reconstruction_grid=null"]


class Tiny(nn.Module):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(width, width), nn.Linear(width, 1)


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- 1. identity ------------------------------------------------------------------------------
def test_same_weights_and_config_give_one_sha256_and_a_tensor_change_another(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = Tiny()
    config = {"_target_": "tests.e2e.test_identity_and_resume.Tiny", "width": 3}
    # safetensors orders its __metadata__ map differently from one save to the next (a hash map):
    # twelve saves had several hashes before the header was made canonical.
    shas = {read_meta(save_pretrained(module, tmp_path / f"e{i}", config=config, meta={"step": 1}))["sha256"]
            for i in range(12)}
    assert len(shas) == 1
    assert shas == {file_sha256(tmp_path / "e0" / "model.safetensors")}
    with torch.no_grad():
        module.a.weight[0, 0] += 1e-3
    changed = read_meta(save_pretrained(module, tmp_path / "changed", config=config, meta={"step": 1}))["sha256"]
    assert changed not in shas
    # the config is part of the identity too (it travels inside the weights file)
    other = read_meta(save_pretrained(Tiny(), tmp_path / "cfg", config={**config, "note": 1}))["sha256"]
    assert other not in shas


def test_canonical_header_keeps_the_file_readable(tmp_path: Path) -> None:
    from safetensors import safe_open

    path = save_safetensors({"x": torch.arange(5.0), "y": torch.ones(2, 3, dtype=torch.int32)}, tmp_path / "t.st",
                            metadata={"zeta": "é ü", "alpha": "a\nb", "format": "pt"})
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"zeta": "é ü", "alpha": "a\nb", "format": "pt"}
        assert torch.equal(f.get_tensor("x"), torch.arange(5.0)) and f.get_tensor("y").sum() == 6
    header = path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")]
    keys = list(json.loads(header)["__metadata__"])
    assert keys == sorted(keys)


def test_exports_of_one_run_agree_and_a_finished_rerun_leaves_the_export_byte_identical(tmp_path: Path) -> None:
    proc = subprocess.run([*cli("argen-train"), *BASE, f"paths.output_root={tmp_path}"], capture_output=True,
                          text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "shapes_vq"
    before = _tree_bytes(run / "export")
    shas = {read_meta(export_run(run, out=tmp_path / f"rep{i}"))["sha256"] for i in range(6)}
    assert shas == {read_meta(run / "export")["sha256"]}
    proc = subprocess.run([*cli("argen-train"), *BASE, f"paths.output_root={tmp_path}"], capture_output=True,
                          text=True, env=cli_env(), timeout=300)  # finished: 0 new steps
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _tree_bytes(run / "export") == before


# ---- 3. a failed resume changes nothing --------------------------------------------------------
def test_resume_with_another_architecture_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    proc = subprocess.run([*cli("argen-train"), *BASE, f"paths.output_root={tmp_path}", "trainer.max_steps=4"],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "shapes_vq"
    files = {p: p.read_bytes() for p in [run / "resolved_config.yaml", run / "checkpoints" / "last.ckpt"]}
    proc = subprocess.run([*cli("argen-train"), *BASE, f"paths.output_root={tmp_path}", "trainer.max_steps=8",
                           "tokenizer.codebook_size=32"], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 1
    assert "tokenizer.codebook_size: 64 (run) -> 32 (now)" in proc.stderr and "Nothing was written" in proc.stderr
    assert "size mismatch" not in proc.stderr
    assert {p: p.read_bytes() for p in files} == files
    export_run(run, out=tmp_path / "still_exports")  # the intact checkpoint still exports
    # what may change does: a longer run resumes
    proc = subprocess.run([*cli("argen-train"), *BASE, f"paths.output_root={tmp_path}", "trainer.max_steps=6"],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_meta(run / "export")["global_step"] == 6


def test_resume_check_allows_training_length_and_logging_and_names_the_rest() -> None:
    old = {"trainer": {"max_steps": 10, "log_every_n_steps": 5}, "module": {"optimizer": {"lr": 1e-4}},
           "generator": {"dim": 32}, "logger": {"csv": None}}
    new = {"trainer": {"max_steps": 20, "log_every_n_steps": 1}, "module": {"optimizer": {"lr": 1e-4}},
           "generator": {"dim": 32}, "logger": {"csv": {"x": 1}}}
    assert set(check_resume_config(old, new, run_dir="r")) == {"trainer.max_steps", "trainer.log_every_n_steps",
                                                                "logger.csv", "logger.csv.x"}
    lr = {**new, "module": {"optimizer": {"lr": 3e-4}}}
    with pytest.raises(ConfigError, match=r"(?s)module.optimizer.lr: 0.0001 \(run\) -> 0.0003 \(now\).*resume_allow"):
        check_resume_config(old, lr, run_dir="r")
    assert "module.optimizer.lr" in check_resume_config(old, lr, run_dir="r", allow=["module.optimizer.lr"])
    wider = {**new, "generator": {"dim": 64}}
    with pytest.raises(ConfigError, match=r"(?s)generator.dim.*start a new run"):  # never, even when allowed
        check_resume_config(old, wider, run_dir="r", allow=["generator"])


# ---- 4. the metrics history survives a resume ------------------------------------------------------
def _loss_steps(run: Path) -> list[int]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [int(float(r["step"])) for r in csv.DictReader(f) if r.get("train/loss")]


def test_metrics_csv_keeps_the_history_across_a_kill_and_resume(tmp_path: Path) -> None:
    log = ["logger=default", "trainer.log_every_n_steps=2"]
    straight, killed = tmp_path / "a", tmp_path / "b"
    for root, extra in ((straight, []), (killed, ["+callbacks.kill._target_=tests.helpers.KillAtStep",
                                                  "+callbacks.kill.step=14"])):
        subprocess.run([*cli("argen-train"), *BASE, *log, f"paths.output_root={root}", *extra], capture_output=True,
                       text=True, env=cli_env(), timeout=300)
    proc = subprocess.run([*cli("argen-train"), *BASE, *log, f"paths.output_root={killed}"], capture_output=True,
                          text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = _loss_steps(straight / "runs" / "shapes_vq")
    assert len(reference) >= 10 and reference[0] < 12
    assert _loss_steps(killed / "runs" / "shapes_vq") == reference  # every step once, none lost
    assert "will be deleted" not in proc.stderr


# ---- 2. paths recorded by a run stay valid from any folder ----------------------------------------
@pytest.fixture(scope="module")
def relative_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A generator trained from ``root`` with relative tokenizer_path / codes_dir, as a user types them."""
    root = tmp_path_factory.mktemp("rel")
    tok = export_tokenizer(root / "tok", 0)
    tokenize(root, tok)
    cwd = Path.cwd()
    os.chdir(root)
    try:
        cfg = compose_config("train", ["experiment=shapes_raster", "paths.output_root=outputs", "tokenizer_path=tok",
                                       "codes_dir=codes", *RASTER_TINY, *GEN_TINY, *TEXT_TINY,
                                       "export_after_training=false"])
        train_run(cfg)
    finally:
        os.chdir(cwd)
    return {"root": root, "run": root / "outputs" / "runs" / "shapes_raster", "tokenizer": tok}


def test_export_and_sample_from_another_folder_find_the_tokenizer(relative_run: dict[str, Path], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    export = export_run(relative_run["run"], out="exports/gen")  # relative out, from another folder
    recorded = read_meta(export)["tokenizer"]
    assert Path(recorded["path"]) == relative_run["tokenizer"].resolve()
    cfg = compose_config("sample", ["generator_path=exports/gen", "output_dir=s", "device=cpu", "batch_size=2",
                                    "prompts=[a red circle]", "n_per_condition=2"])
    assert sample_run(cfg)["num_images"] == 2
    # the whole tree moved: the path relative to the export still finds the tokenizer
    moved = tmp_path / "moved"
    shutil.copytree(relative_run["tokenizer"], moved / "tok")
    shutil.copytree(export, moved / "exports" / "gen")
    meta = json.loads((moved / "exports" / "gen" / "meta.json").read_text())
    meta["tokenizer"]["path"] = str(tmp_path / "gone")
    meta["tokenizer"]["relpath"] = "../../tok"
    (moved / "exports" / "gen" / "meta.json").write_text(json.dumps(meta))
    cfg = compose_config("sample", [f"generator_path={moved / 'exports' / 'gen'}", "output_dir=s2", "device=cpu",
                                    "prompts=[a red circle]", "n_per_condition=1"])
    assert sample_run(cfg)["num_images"] == 1
    # nothing there: the error names the override
    meta["tokenizer"]["relpath"] = "../../nope"
    (moved / "exports" / "gen" / "meta.json").write_text(json.dumps(meta))
    cfg = compose_config("sample", [f"generator_path={moved / 'exports' / 'gen'}", "output_dir=s3", "device=cpu",
                                    "prompts=[a red circle]", "n_per_condition=1"])
    with pytest.raises(ConfigError, match="pass tokenizer_path="):
        sample_run(cfg)


def test_a_run_that_recorded_relative_paths_still_exports_from_elsewhere(relative_run: dict[str, Path],
                                                                          tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs made before paths were recorded absolute: found relative to the run folder's ancestors,
    checked by the tokenizer's sha256."""
    run = tmp_path / "outputs" / "runs" / "old"
    shutil.copytree(relative_run["run"], run)
    shutil.copytree(relative_run["tokenizer"], tmp_path / "tok")
    config = yaml.safe_load((run / "resolved_config.yaml").read_text())
    config["tokenizer_path"] = "tok"
    (run / "resolved_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.chdir(relative_run["root"].parent)  # a folder where "tok" does not exist
    export = export_run(run, out=tmp_path / "exp")
    assert Path(read_meta(export)["tokenizer"]["path"]) == (tmp_path / "tok").resolve()
    assert hashlib.sha256((tmp_path / "tok" / "model.safetensors").read_bytes()).hexdigest() == \
        read_meta(export)["tokenizer"]["sha256"]


# ---- 5. export_checkpoint=best exports the validation minimum ---------------------------------------
def test_export_checkpoint_best_takes_the_lowest_monitored_validation(tmp_path: Path) -> None:
    # Monitoring val/psnr with mode min selects the worst reconstruction, i.e. an early validation, so
    # the export must differ from the last checkpoint: the test sees which checkpoint was read.
    cfg = compose_config("train", [*BASE, f"paths.output_root={tmp_path}", "trainer.val_check_interval=4",
                                   "logger=default", "trainer.log_every_n_steps=2", "export_checkpoint=best",
                                   "best_monitor=val/psnr"])
    result = train_run(cfg)
    run = tmp_path / "runs" / "shapes_vq"
    with open(run / "csv" / "metrics.csv", newline="") as f:
        vals = [(float(r["val/psnr"]), int(float(r["step"]))) for r in csv.DictReader(f) if r.get("val/psnr")]
    assert len(vals) >= 4
    worst, step = min(vals)
    meta = read_meta(Path(result["export_dir"]))
    assert meta["source_checkpoint"].endswith("best.ckpt")
    assert result["best"]["score"] == pytest.approx(worst, rel=1e-5)
    assert meta["global_step"] in (step, step + 1) and meta["global_step"] < 24
    with pytest.raises(ConfigError, match="no validation"):
        train_run(compose_config("train", [*BASE, f"paths.output_root={tmp_path / 'b'}", "export_checkpoint=best",
                                           "trainer.limit_val_batches=0"]))
