"""argen-train: train one stage (tokenizer or generator) with Lightning, configured by Hydra.

    argen-train experiment=shapes_vq trainer=cpu
    argen-train experiment=shapes_vq resume=auto          # continue the last checkpoint
    argen-train experiment=shapes_vq trainer=ddp_cpu      # 2 CPU processes (gloo)
    argen-train experiment=shapes_raster                  # a generator on pre-extracted codes
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict

from argen.cli.common import CONFIG_DIR, ConfigError, build, to_plain
from argen.training.checkpoint_io import AtomicCheckpointIO, write_text_atomic
from argen.training.progress import quiet_lightning

log = logging.getLogger("argen")

STAGES = ("tokenizer", "generator")


def resolve_resume(resume: str | None, run_dir: Path) -> str | None:
    """auto -> last.ckpt of this run if any; None -> fresh start (refused over existing checkpoints)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume in (None, "null", "none", "None"):
        if last.exists():
            raise ConfigError(f"{run_dir} already has checkpoints ({last}); pass resume=auto to continue that run, "
                              f"or choose another name=... (or delete the folder) to start fresh")
        return None
    if resume == "auto":
        return str(last) if last.exists() else None
    path = Path(str(resume)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint '{path}' does not exist; use resume=auto to continue the last "
                                f"checkpoint of this run (name={run_dir.name}) or resume=null to start fresh")
    return str(path)


EXPORT_CHECKPOINTS = ("last", "best")


def _callbacks(cfg: DictConfig) -> list[L.Callback]:
    callbacks = [build(node, f"callbacks.{key}") for key, node in (cfg.get("callbacks") or {}).items() if node]
    which = cfg.get("export_checkpoint", "last")
    if which not in EXPORT_CHECKPOINTS:
        raise ConfigError(f"export_checkpoint must be one of {EXPORT_CHECKPOINTS}, got {which!r}")
    if which == "best":
        callbacks.append(best_checkpoint(cfg))
    return callbacks


def best_checkpoint(cfg: DictConfig) -> L.Callback:
    """checkpoints/best.ckpt: the lowest ``best_monitor`` over the run's validations (export_checkpoint=best)."""
    if cfg.trainer.get("limit_val_batches") == 0 or not (cfg.get("data") or {}).get("val"):
        raise ConfigError("export_checkpoint=best picks the checkpoint by its validation loss, but this run "
                          "has no validation (data.val is empty or trainer.limit_val_batches=0); use "
                          "export_checkpoint=last")
    return ModelCheckpoint(dirpath=str(Path(cfg.paths.run_dir) / "checkpoints"), filename="best",
                           monitor=str(cfg.get("best_monitor", "val/loss")), mode="min", save_top_k=1,
                           save_last=False, auto_insert_metric_name=False, enable_version_counter=False)


def _loggers(cfg: DictConfig) -> list[Any] | bool:
    loggers = [build(node, f"logger.{key}") for key, node in (cfg.get("logger") or {}).items() if node]
    return loggers or False


def build_stage(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule]:
    """Instantiate the Lightning module and data module of ``cfg.stage``."""
    if cfg.stage not in STAGES:
        raise ConfigError(f"unknown stage {cfg.stage!r}; expected one of {STAGES}")
    if cfg.stage == "generator" and cfg.get("target_path"):  # a drafter over a frozen target generator
        from argen.training.prepare import attach_target, prepare_drafter_config

        prepare_drafter_config(cfg)  # sizes from the target, codes of the target's tokenizer
        drafter = build(cfg.generator, "generator")
        attach_target(drafter, cfg.target_path)
        module = build(cfg.module, "module", generator=drafter)
    elif cfg.stage == "generator":
        from argen.training.prepare import attach_tokenizer, prepare_generator_config

        prepare_generator_config(cfg)  # sizes from the code cache, tokenizer hash, text vocabulary
        generator = build(cfg.generator, "generator")
        attach_tokenizer(generator, cfg.tokenizer_path)  # VAR: the scale-residual accumulate step
        module = build(cfg.module, "module", generator=generator)
    else:
        tokenizer = build(cfg.tokenizer, "tokenizer")
        objective = build(cfg.objective, "objective")
        module = build(cfg.module, "module", tokenizer=tokenizer, loss=objective)
    datamodule = build(cfg.data, "data")
    return module, datamodule


# Paths given on the command line are relative to the folder argen-train ran in; the run records them
# absolute, so that exporting or sampling from another folder finds the same files.
PATH_KEYS = ("tokenizer_path", "codes_dir", "target_path")


def absolute_paths(cfg: DictConfig) -> None:
    with open_dict(cfg):
        for key in PATH_KEYS:
            if cfg.get(key):
                cfg[key] = str(Path(str(cfg[key])).expanduser().resolve())


def check_resume(cfg: DictConfig, run_dir: Path) -> None:
    """Before anything is written: a resumed run must keep the run's architecture and recipe."""
    from argen.training.resume import check_resume_config

    previous = run_dir / "resolved_config.yaml"
    if not previous.is_file():
        return
    allowed = check_resume_config(yaml.safe_load(previous.read_text()) or {}, to_plain(cfg), run_dir=str(run_dir),
                                  allow=list(cfg.get("resume_allow") or []))
    for key, (old, new) in allowed.items():
        if key not in ("resume",):
            log.info("resuming with %s: %r -> %r", key, old, new)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train as configured; returns the run folder, the export folder (if any) and final metrics."""
    # Manual optimisation checkpoints after the step by design (resume continues from there);
    # Lightning's notice about it would repeat at every checkpoint.
    warnings.filterwarnings("ignore", message=".*manual optimization and every_n_train_steps.*")
    quiet_lightning()
    absolute_paths(cfg)
    run_dir = Path(cfg.paths.run_dir)
    ckpt_path = resolve_resume(cfg.get("resume"), run_dir)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))
    L.seed_everything(cfg.seed, workers=True)
    module, datamodule = build_stage(cfg)
    if ckpt_path:
        check_resume(cfg, run_dir)
    callbacks = _callbacks(cfg)
    # callbacks.progress=null means no progress at all, not Lightning's default (Rich) bar.
    bar = {} if "enable_progress_bar" in cfg.trainer else {
        "enable_progress_bar": any(isinstance(c, ProgressBar) for c in callbacks)}
    trainer: L.Trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=_loggers(cfg),
                               plugins=[AtomicCheckpointIO()], use_distributed_sampler=False,
                               default_root_dir=str(run_dir), **bar)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "resolved_config.yaml", yaml.safe_dump(to_plain(cfg), sort_keys=False))
        log.info("run %s: seed %d, %s, resume from %s", run_dir, cfg.seed, cfg.stage, ckpt_path or "scratch")
    for logger in trainer.loggers:  # the seed and every setting, next to the curves
        logger.log_hyperparams(to_plain(cfg))
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    # The periodic checkpoint may predate the last steps; the export reads last.ckpt, so write it now.
    trainer.save_checkpoint(str(run_dir / "checkpoints" / "last.ckpt"), weights_only=False)  # with optimizer state
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    result: dict[str, Any] = {"run_dir": str(run_dir), "metrics": metrics, "export_dir": None}
    if cfg.get("export_after_training") and trainer.is_global_zero:
        from argen.io.export import export_run
        which = cfg.get("export_checkpoint", "last")
        if which == "best":
            best = next(c for c in callbacks if isinstance(c, ModelCheckpoint) and c.filename == "best")
            if best.best_model_path and Path(best.best_model_path).is_file():
                log.info("exporting the best checkpoint: %s %.4g (%s)", best.monitor, float(best.best_model_score),
                         best.best_model_path)
                result["best"] = {"monitor": best.monitor, "score": float(best.best_model_score),
                                  "path": best.best_model_path}
            else:
                log.warning("export_checkpoint=best, but no validation ran (trainer.val_check_interval > "
                            "max_steps?); exporting the last checkpoint")
                which = "last"
        result["export_dir"] = str(export_run(run_dir, ckpt=which, overwrite=True))
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    absolute_paths(cfg)  # before resolution, so that interpolations of these paths are absolute too
    OmegaConf.resolve(cfg)
    run(cfg)


if __name__ == "__main__":
    main()
