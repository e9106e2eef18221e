"""argen-sample: draw images from an exported generator and write them for viewing and evaluation.

    argen-sample generator_path=outputs/runs/digits_raster/export classes=all n_per_condition=8
    argen-sample generator_path=outputs/runs/shapes_raster/export prompt_file=prompts.txt
    argen-sample generator_path=... suite=shapes eval=shapes            # + ShapesEval
    torchrun --nproc_per_node 2 -m argen.cli.sample generator_path=...    # each process a shard
    argen-sample -m generator_path=... suite=shapes eval=shapes sampler.cfg_scale=1,2,4

Writes ``<output_dir>/``: ``grid.png``, ``images/<index:06d>.png``, ``samples.npz`` (uint8
[N, H, W, 3] under ``arr_0``, the ADM evaluator's format), ``labels.json`` (class id per sample,
class-conditional only), ``geneval/`` (GenEval's layout, when conditions carry GenEval metadata)
and ``settings.json`` (every setting, the seed, models' hashes, sampling stats). Sample ``i`` is
drawn with its own seed ``hash(seed, i)``, so images do not depend on batch size or process count.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

from argen.cli.common import CONFIG_DIR, ConfigError, build, pick_device, pick_dtype, to_plain
from argen.core import Condition, check_compatible
from argen.core.progress import progress
from argen.data.base import tensor_to_uint8
from argen.samplers.random import sample_seeds
from tokenizers_vq.io import load_pretrained, read_meta

log = logging.getLogger("argen")

OUTPUT_MARKERS = ("settings.json", "images", "samples.npz", "grid.png", "geneval")


@dataclass
class Conditions:
    """One entry per condition: class id or prompt, and GenEval metadata when known."""

    labels: list[int] | None
    texts: list[str] | None
    metadata: list[dict[str, Any]] | None

    def __len__(self) -> int:
        return len(self.labels if self.labels is not None else self.texts or [])

    def batch(self, ids: list[int], device: torch.device) -> Condition:
        if self.labels is not None:
            return Condition(labels=torch.tensor([self.labels[i] for i in ids], device=device))
        assert self.texts is not None
        texts = [self.texts[i] for i in ids]
        empty = torch.tensor([not t.strip() for t in texts], device=device)  # the null condition
        return Condition(texts=texts, null=empty if bool(empty.any()) else None)


# ---- models ---------------------------------------------------------------------------------
def load_models(cfg: DictConfig, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any, dict[str, Any]]:
    """Generator + the tokenizer its codes came from, checked against each other."""
    gen_dir = Path(cfg.generator_path)
    meta = read_meta(gen_dir)
    if meta.get("kind") not in (None, "generator"):
        raise ConfigError(f"{gen_dir} is an exported {meta.get('kind')}, not a generator")
    recorded = meta.get("tokenizer") or {}
    tok_dir = Path(cfg.tokenizer_path or recorded.get("path") or "")
    if not cfg.tokenizer_path and not recorded.get("path"):
        raise ConfigError(f"{gen_dir}/meta.json records no tokenizer; pass tokenizer_path=<exported tokenizer>")
    tok_meta = read_meta(tok_dir)
    if recorded.get("sha256") and tok_meta["sha256"] != recorded["sha256"]:
        raise ConfigError(f"tokenizer {tok_dir} (sha256 {tok_meta['sha256'][:12]}…) is not the one the generator "
                          f"was trained with ({recorded['sha256'][:12]}…, {recorded.get('path')}); its codes would "
                          f"decode to garbage")
    generator = load_pretrained(gen_dir).to(device=device, dtype=dtype).eval()
    tokenizer = load_pretrained(tok_dir).to(device).eval()
    check_vocabulary(tokenizer, generator)
    if hasattr(generator, "attach_tokenizer"):  # VAR builds its next-scale inputs with the tokenizer's step
        generator.attach_tokenizer(tokenizer)
    return generator, tokenizer, {"generator": meta, "tokenizer": tok_meta, "tokenizer_path": str(tok_dir)}


def check_vocabulary(tokenizer: Any, generator: Any) -> None:
    t, g = tokenizer.layout, generator.layout
    if t.vocab_size != g.vocab_size:
        raise ValueError(f"vocabulary mismatch: the tokenizer has {t.vocab_size} codes, the generator predicts "
                         f"{g.vocab_size}; use the tokenizer the generator was trained with")
    if (t.kind, t.shapes) != (g.kind, g.shapes):
        raise ValueError(f"layout mismatch: the tokenizer makes {t.kind} {list(t.shapes)} tokens, the generator "
                         f"{g.kind} {list(g.shapes)}")


# ---- conditions -----------------------------------------------------------------------------
def build_conditions(cfg: DictConfig, generator: Any) -> Conditions:
    given = [k for k in ("classes", "prompts", "prompt_file", "geneval_metadata", "suite") if cfg.get(k) is not None]
    if len(given) != 1:
        raise ConfigError(f"give exactly one of classes, prompts, prompt_file, geneval_metadata, suite (got {given})")
    key = given[0]
    num_classes = getattr(generator, "num_classes", None)
    class_conditional = num_classes is not None
    if (key == "classes") != class_conditional:
        kind = "class-conditional (use classes=...)" if class_conditional else "text-conditional (use prompts...)"
        raise ConfigError(f"the generator is {kind}, but {key}= was given")
    if key == "classes":
        return Conditions(labels=_class_ids(cfg.classes, num_classes), texts=None, metadata=None)
    if key == "prompts":
        prompts = [cfg.prompts] if isinstance(cfg.prompts, str) else [str(p) for p in cfg.prompts]
        _warn_empty(prompts)
        return Conditions(labels=None, texts=prompts, metadata=None)
    if key == "prompt_file":
        path = Path(cfg.prompt_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"prompt_file '{path}' does not exist (one prompt per line expected)")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise ConfigError(f"prompt_file '{path}' has no prompts")
        return Conditions(labels=None, texts=prompts, metadata=None)
    if key == "geneval_metadata":
        from argen.eval.geneval import read_metadata

        records = read_metadata(cfg.geneval_metadata)
    else:
        records = _suite(cfg, generator)
    return Conditions(labels=None, texts=[r["prompt"] for r in records], metadata=records)


def _warn_empty(prompts: list[str]) -> None:
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        log.warning("prompt(s) %s of %d are empty: an empty caption is the unconditional (null) condition, so "
                    "these samples ignore any prompt (and guidance has no effect on them)",
                    ", ".join(str(i) for i in empty), len(prompts))


def _class_ids(classes: Any, num_classes: int) -> list[int]:
    ids = list(range(num_classes)) if classes == "all" else [int(c) for c in (
        [classes] if isinstance(classes, int) else classes)]
    bad = [c for c in ids if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"class id {bad[0]} is out of range: the generator has {num_classes} classes "
                         f"(ids 0..{num_classes - 1})")
    return ids


def _suite(cfg: DictConfig, generator: Any) -> list[dict[str, Any]]:
    if cfg.suite != "shapes":
        raise ConfigError(f"unknown prompt suite {cfg.suite!r} (available: shapes)")
    from argen.data.shapes import ShapesWorld, make_prompt_suite

    return make_prompt_suite(ShapesWorld(), n_per_tag=int(cfg.suite_per_tag), seed=int(cfg.seed))


# ---- output folder and processes --------------------------------------------------------------
def prepare_output(out: Path, overwrite: bool, rank: int) -> None:
    """Refuse (every rank, before anyone writes) or clear an output folder that already holds samples."""
    existing = [m for m in OUTPUT_MARKERS if (out / m).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"output folder {out} already holds samples ({', '.join(existing)}); pass "
                              f"overwrite=true to replace them or choose another output_dir / name")
    _barrier()  # every rank has looked before rank 0 clears or creates anything
    if rank == 0:
        for m in existing:
            target = out / m
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        (out / "images").mkdir(parents=True, exist_ok=True)


def init_distributed(device_kind: str) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ---- sampling ---------------------------------------------------------------------------------
def sample_shard(cfg: DictConfig, sampler: Any, generator: Any, tokenizer: Any, conds: Conditions, out: Path,
                 rank: int, world: int) -> dict[str, float]:
    """Sample indices rank, rank + world, ... and write images/<index>.png; returns summed stats."""
    n = int(cfg.n_per_condition)
    total = len(conds) * n
    mine = list(range(rank, total, world))
    device = next(generator.parameters()).device
    stats = {"forward_passes": 0.0, "tokens": 0.0, "wall_seconds": 0.0, "images": 0.0, "batches": 0.0}
    bar = progress(total=len(mine), desc="sampling", unit="img", enabled=rank == 0)
    for start in range(0, len(mine), int(cfg.batch_size)):
        ids = mine[start:start + int(cfg.batch_size)]
        cond = conds.batch([i // n for i in ids], device)
        result = sampler.sample(generator, cond, seeds=sample_seeds(int(cfg.seed), ids).to(device))
        images = decode(tokenizer, result.tokens, int(cfg.decode_batch_size))  # (b, H, W, 3) uint8
        for i, image in zip(ids, images):
            Image.fromarray(image).save(out / "images" / f"{i:06d}.png")
        for key in ("forward_passes", "tokens", "wall_seconds"):
            stats[key] += float(getattr(result.stats, key))
        for key, value in result.stats.extra.items():  # sampler-specific bounds, e.g. LANTERN's max_tvd
            if key.startswith("max_"):
                stats[key] = max(stats.get(key, float("-inf")), float(value))
        stats["images"] += len(ids)
        stats["batches"] += 1
        bar.update(len(ids))
    bar.close()
    return stats


@torch.no_grad()
def decode(tokenizer: Any, tokens: torch.Tensor, chunk: int) -> np.ndarray:
    """Tokens -> uint8 images, ``chunk`` at a time (1: bit-identical whatever the sampling batch,
    since convolution kernels may pick different algorithms for different batch sizes)."""
    parts = [tokenizer.decode(t).float().cpu() for t in tokens.split(max(chunk, 1))]
    return tensor_to_uint8(torch.cat(parts))


def _gather_stats(stats: dict[str, float]) -> list[dict[str, float]]:
    if not dist.is_initialized():
        return [stats]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, stats)
    return gathered


def finalize(cfg: DictConfig, conds: Conditions, out: Path) -> dict[str, Any]:
    """Rank 0: npz, grid, labels.json and the GenEval layout, from the per-image PNGs."""
    n = int(cfg.n_per_condition)
    total = len(conds) * n
    paths = [out / "images" / f"{i:06d}.png" for i in range(total)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise RuntimeError(f"{len(missing)} sample images are missing (first: {missing[0]}); a process failed")
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])  # (N, H, W, 3)
    files: dict[str, Any] = {"images": str(out / "images")}
    if cfg.save_npz:
        from argen.eval.images import save_npz

        files["npz"] = str(save_npz(images, out / "samples.npz"))
    files["grid"] = str(_save_grid(images[: int(cfg.grid_max_images)], out / "grid.png", n))
    if conds.labels is not None:
        (out / "labels.json").write_text(json.dumps([conds.labels[i // n] for i in range(total)]))
        files["labels"] = str(out / "labels.json")
    if conds.metadata is not None:
        from argen.eval.geneval import write_sample_folder

        for k, record in enumerate(conds.metadata):
            write_sample_folder(out / "geneval", k, record, list(images[k * n:(k + 1) * n]))
        files["geneval"] = str(out / "geneval")
    if not cfg.save_images:
        shutil.rmtree(out / "images")
        files.pop("images")
    return files


def _save_grid(images: np.ndarray, path: Path, per_row: int) -> Path:
    from torchvision.utils import make_grid

    nrow = per_row if 1 < per_row <= 16 else int(np.ceil(np.sqrt(len(images))))
    grid = make_grid(torch.from_numpy(images).permute(0, 3, 1, 2), nrow=nrow, padding=2, pad_value=255)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    return path


def _settings(cfg: DictConfig, sampler: Any, info: dict[str, Any], stats: list[dict[str, float]], world: int,
              files: dict[str, Any]) -> dict[str, Any]:
    total = {k: sum(s.get(k, 0.0) for s in stats) for k in stats[0] if not k.startswith("max_")}
    bounds = {k: max(s[k] for s in stats if k in s) for k in {k for s in stats for k in s if k.startswith("max_")}}
    wall = max(s["wall_seconds"] for s in stats)
    images = total["images"]
    return {
        "config": to_plain(cfg), "sampler": sampler.settings() if hasattr(sampler, "settings") else None,
        "seed": int(cfg.seed), "num_images": int(images), "processes": world, "files": files,
        "generator": {"path": str(cfg.generator_path), "sha256": info["generator"].get("sha256"),
                      "step": info["generator"].get("global_step"), "layout": info["generator"].get("layout")},
        "tokenizer": {"path": info["tokenizer_path"], "sha256": info["tokenizer"].get("sha256")},
        "stats": {"forward_passes_per_image": total["forward_passes"] / max(total["batches"], 1) if world == 1
                  else stats[0]["forward_passes"] / max(stats[0]["batches"], 1),
                  "tokens_per_pass": total["tokens"] / max(total["forward_passes"], 1),
                  "sampling_seconds": wall, "images_per_s": images / max(wall, 1e-9), **bounds},
        "versions": {"torch": torch.__version__},
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    """Sample as configured; returns the settings written to settings.json (rank 0) or {}."""
    device = pick_device(str(cfg.device))
    rank, world = init_distributed(device.type)
    dtype = pick_dtype(cfg.dtype)
    out = Path(cfg.output_dir)
    generator, tokenizer, info = load_models(cfg, device, dtype)
    sampler = build(cfg.sampler, "sampler")
    check_compatible(sampler, generator)
    drafted_for = getattr(sampler, "target_sha256", None)  # a drafter is trained for one generator
    if drafted_for and drafted_for != info["generator"].get("sha256"):
        raise ConfigError(f"the sampler's drafter was trained for generator {drafted_for[:12]}…, not "
                          f"{cfg.generator_path} ({str(info['generator'].get('sha256'))[:12]}…); train a drafter "
                          f"for this generator (argen-train experiment=shapes_raster_drafter target_path=...)")
    if hasattr(sampler, "attach_tokenizer"):  # LANTERN's latent proximity comes from the codebook
        sampler.attach_tokenizer(tokenizer)
    conds = build_conditions(cfg, generator)
    if int(cfg.n_per_condition) < 1:
        raise ConfigError(f"n_per_condition must be >= 1, got {cfg.n_per_condition}")
    prepare_output(out, bool(cfg.overwrite), rank)
    _barrier()
    start = time.perf_counter()
    stats = _gather_stats(sample_shard(cfg, sampler, generator, tokenizer, conds, out, rank, world))
    _barrier()
    try:
        return _finish(cfg, sampler, info, conds, out, stats, world, start) if rank == 0 else {}
    finally:
        _barrier()  # other ranks wait for rank 0's files, then every rank leaves the group cleanly
        if dist.is_initialized():
            dist.destroy_process_group()


def _finish(cfg: DictConfig, sampler: Any, info: dict[str, Any], conds: Conditions, out: Path,
            stats: list[dict[str, float]], world: int, start: float) -> dict[str, Any]:
    """Rank 0: assemble the outputs, evaluate if asked, write settings.json."""
    files = finalize(cfg, conds, out)
    settings = _settings(cfg, sampler, info, stats, world, files)
    settings["stats"]["total_seconds"] = time.perf_counter() - start
    if cfg.get("eval"):
        settings["evaluation"] = evaluate_samples(cfg, out, files)
    (out / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True, default=str))
    log.info("%d images (%.2f img/s) -> %s", settings["num_images"], settings["stats"]["images_per_s"], out)
    return settings


def evaluate_samples(cfg: DictConfig, out: Path, files: dict[str, Any]) -> dict[str, Any]:
    """Run the configured ``eval`` section of argen-eval on what was just written."""
    from argen.cli.evaluate import run_distribution, run_prompts

    section = cfg.eval
    if section.kind == "prompts":
        if "geneval" not in files:
            raise ConfigError("a prompt-based evaluation needs GenEval metadata: sample with suite=shapes or "
                              "geneval_metadata=<file>")
        return run_prompts(section, files["geneval"], out)
    if "labels" in files and section.get("labels") is None:
        with open_dict(section):
            section.labels = files["labels"]
    return run_distribution(section, files.get("npz") or files["images"])


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="sample")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:  # each job of a sweep writes into its own folder
        with open_dict(cfg):
            cfg.output_dir = hc.runtime.output_dir
            cfg.sweep_overrides = list(hc.overrides.task)  # the summary table reads what varied
    OmegaConf.resolve(cfg)
    run(cfg)


if __name__ == "__main__":
    main()
