"""argen-sample: draw images from an exported generator and write them for viewing and evaluation.

A layer over :mod:`argen.pipeline` (models, sampler, per-sample seeds, decoding) and the
:mod:`argen.eval.runners` (``eval=...``); what is its own: the output folder, its lock, resume,
torchrun shards and the files written.

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

One run per folder: a run holds an exclusive lock on ``<output_dir>/.argen-sample.lock`` (rank 0
for a whole torchrun job) and a second run into the same folder fails at once, naming the holder.

Interrupted runs: ``INCOMPLETE.json`` (the settings that determine the images: models' sha256,
sampler, seed, conditions, ``n_per_condition``, dtype, device) is written before sampling and
removed once ``settings.json`` is written, so an unfinished folder says so; argen-eval refuses it.
``resume=true`` continues it: the recorded settings must equal the current ones, images already
written (whole: PNGs are written to a temp file and renamed) are kept and the others are drawn
with the same per-index seeds, so the result is bit-identical to an uninterrupted run.
``resume=true`` on an empty folder starts a run; on a finished one it refuses.

Throughput, in ``settings.json`` ``stats`` and the final log line, for the images this run drew:
``sampler_images_per_s`` (sampler time only) and ``end_to_end_images_per_s`` (wall time from the
start of sampling through decoding and writing every output; model loading and ``eval`` excluded).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

from argen.cli.common import CONFIG_DIR, ConfigError, pick_device, to_plain
from argen.io.folders import (MARKER_NAME, FolderLock, atomic_write, atomic_write_json, read_marker,
                               remove_marker, remove_temp_files, write_marker)
from argen.core.progress import progress
from argen.pipeline import Conditions, ExportInfo, Pipeline, conditions_for, grid_image, load_models

log = logging.getLogger("argen")

OUTPUT_MARKERS = ("settings.json", "images", "samples.npz", "grid.png", "geneval")


# ---- conditions -----------------------------------------------------------------------------
def build_conditions(cfg: DictConfig, generator: Any, info: ExportInfo | None = None) -> Conditions:
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
        return conditions_for(generator, _class_ids(cfg.classes, num_classes))
    if key == "prompts":
        prompts = [cfg.prompts] if isinstance(cfg.prompts, str) else [str(p) for p in cfg.prompts]
        return conditions_for(generator, prompts)  # warns about empty prompts
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
        records = _suite(cfg, info)
    return Conditions(labels=None, texts=[r["prompt"] for r in records], metadata=records)


def _class_ids(classes: Any, num_classes: int) -> list[int]:
    return list(range(num_classes)) if classes == "all" else [int(c) for c in (
        [classes] if isinstance(classes, int) else classes)]


def _suite(cfg: DictConfig, info: ExportInfo | None) -> list[dict[str, Any]]:
    if cfg.suite != "shapes":
        raise ConfigError(f"unknown prompt suite {cfg.suite!r} (available: shapes)")
    from argen.data.shapes import make_prompt_suite

    world = training_world(info, need_holdout=cfg.suite_holdout != "include")
    return make_prompt_suite(world, n_per_tag=int(cfg.suite_per_tag), seed=int(cfg.seed),
                             holdout_mode=str(cfg.suite_holdout), fill=bool(cfg.suite_fill))


def training_world(info: ExportInfo | None, *, need_holdout: bool = False) -> Any:
    """The shapes world the generator was trained on (its shapes, colours, held-out pairs and relations),
    read back from the training split of the code cache its meta.json records; the default world when the
    cache is not a shapes cache or cannot be found, unless ``need_holdout`` (``suite_holdout=exclude|only``
    means nothing without the training world's held-out combinations)."""
    from argen.data.codes import MANIFEST, read_manifest
    from argen.data.shapes import ShapesWorld, world_from_config
    from argen.io.export import locate

    recorded = (info.generator_meta.get("codes_dir") if info is not None else None)
    where = locate(recorded, info.generator_path) if recorded else None
    train = None
    if where is not None and (where / MANIFEST).is_file():
        train = ((read_manifest(where).get("preprocessing") or {}).get("datasets") or {}).get("train")
    world = world_from_config(train) if train else None
    if world is None:
        if need_holdout:
            raise ConfigError(
                f"suite_holdout needs the generator's training world, read from its shapes code cache "
                f"(meta.json codes_dir: {recorded!r}, found: {where}); sample with suite_holdout=include, or "
                f"restore the cache folder")
        return ShapesWorld()
    if world.holdout_pairs or world.held_relations:
        log.info("prompt suite of the training world (%s): held out %s and %s", where,
                 sorted(world.holdout_pairs), sorted(world.holdout_relations))
    return world


# ---- output folder and processes --------------------------------------------------------------
def image_settings(cfg: DictConfig, info: ExportInfo, conds: Conditions, device: torch.device) -> dict[str, Any]:
    """What the images depend on (recorded in INCOMPLETE.json, checked by resume=true); batch_size and
    the process count are not among them."""
    settings = {"generator_sha256": info.generator_sha256, "tokenizer_sha256": info.tokenizer_sha256,
                "sampler": to_plain(cfg.sampler), "seed": int(cfg.seed), "n_per_condition": int(cfg.n_per_condition),
                "conditions": conds.fingerprint(), "dtype": str(cfg.dtype),
                "decode_batch_size": int(cfg.decode_batch_size), "device": device.type}
    if cfg.get("num_tokens") is not None:
        settings["num_tokens"] = int(cfg.num_tokens)
    return json.loads(json.dumps(settings, default=str))  # as they read back from the marker


def prepare_output(out: Path, *, overwrite: bool, resume: bool, settings: dict[str, Any], total: int) -> None:
    """Rank 0, holding the folder's lock: refuse, clear or continue what the folder holds, then mark
    the run incomplete until it finishes."""
    marker = read_marker(out)
    existing = [m for m in OUTPUT_MARKERS if (out / m).exists()]
    if resume:
        check_resumable(out, marker, existing, settings)
    elif marker is not None or existing:
        if not overwrite:
            raise FileExistsError(_occupied(out, marker, existing))
        for m in existing:
            target = out / m
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)
    remove_temp_files(out / "images")
    write_marker(out, settings, total)


def _occupied(out: Path, marker: dict[str, Any] | None, existing: list[str]) -> str:
    if marker is None:
        return (f"output folder {out} already holds samples ({', '.join(existing)}); pass overwrite=true to replace "
                f"them or choose another output_dir / name")
    written = sum(1 for _ in (out / "images").glob("*.png")) if (out / "images").is_dir() else 0
    return (f"output folder {out} holds an incomplete argen-sample run ({MARKER_NAME}: {written} of "
            f"{marker.get('total_images', '?')} images written, started {marker.get('started', '?')}); pass "
            f"resume=true to continue it with the same settings, or overwrite=true to start over")


def check_resumable(out: Path, marker: dict[str, Any] | None, existing: list[str], settings: dict[str, Any]) -> None:
    """resume=true: the folder holds an interrupted run of exactly these settings, or nothing yet."""
    if marker is None and "settings.json" in existing:
        raise FileExistsError(f"output folder {out} holds a finished run (settings.json, no {MARKER_NAME}): nothing "
                              f"to resume; pass overwrite=true (not resume=true) to replace it, or choose another "
                              f"output_dir / name")
    if marker is None and existing:
        raise FileExistsError(f"output folder {out} holds samples ({', '.join(existing)}) but no {MARKER_NAME} "
                              f"recording how they were drawn (an older argen-sample, or files from elsewhere), so "
                              f"resume=true cannot check them; pass overwrite=true to start over")
    if marker is None:
        log.info("resume=true: %s holds no run yet; starting one", out)
        return
    recorded = marker.get("settings") or {}
    differ = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
    if differ:
        detail = "; ".join(f"{k}: recorded {_brief(recorded.get(k))}, now {_brief(settings.get(k))}" for k in differ)
        raise ConfigError(f"cannot resume {out}: settings differ from the interrupted run's ({detail}). Resume with "
                          f"the same settings, or pass overwrite=true instead of resume=true to start over")
    log.info("resume=true: continuing the interrupted run in %s", out)


def _brief(value: Any, width: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _on_rank_zero(rank: int, action: Callable[[], None]) -> None:
    """``action()`` on rank 0 only; its error is raised on every rank, so none waits for a rank that gave up."""
    error: Exception | None = None
    if rank == 0:
        try:
            action()
        except Exception as e:  # noqa: BLE001  (re-raised below, after the other ranks are told)
            error = e
    if dist.is_initialized():
        box = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(box, src=0)
        if rank != 0 and box[0] is not None:
            raise RuntimeError(f"rank 0 could not prepare the output folder: {box[0]}")
    if error is not None:
        raise error


def init_distributed(device_kind: str) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ---- sampling ---------------------------------------------------------------------------------
def sample_shard(cfg: DictConfig, pipe: Pipeline, conds: Conditions, out: Path, rank: int,
                 world: int) -> dict[str, float]:
    """Sample indices rank, rank + world, ... whose images/<index>.png is not already there (whole) and
    write each as it finishes; returns summed stats of what this process drew."""
    n = int(cfg.n_per_condition)
    share = range(rank, len(conds) * n, world)
    mine = [i for i in share if not _is_whole_png(out / "images" / f"{i:06d}.png")]
    if len(mine) < len(share) and rank == 0:
        log.info("resume: %d of this process's %d images are already written; drawing the other %d",
                 len(share) - len(mine), len(share), len(mine))
    bar = progress(total=len(mine), desc="sampling", unit="img", enabled=rank == 0)

    def write(indices: list[int], images: np.ndarray) -> None:
        for i, image in zip(indices, images):
            _write_png(out / "images" / f"{i:06d}.png", image)
        bar.update(len(indices))

    stats = pipe.stream(conds, n=n, seed=int(cfg.seed), indices=mine, batch_size=int(cfg.batch_size),
                        decode_batch_size=int(cfg.decode_batch_size), on_images=write)
    bar.close()
    return {"forward_passes": float(stats.sampling.forward_passes), "tokens": float(stats.sampling.tokens),
            "wall_seconds": stats.sampler_seconds, "images": float(stats.images), "row_passes": stats.row_passes,
            **stats.bounds}


def _is_whole_png(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, SyntaxError, ValueError):  # truncated or not an image: drawn again
        return False
    return True


def _write_png(path: Path, image: np.ndarray) -> None:
    atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"))


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
        files["npz"] = str(atomic_write(out / "samples.npz", lambda f: np.savez(f, arr_0=images)))
    _write_png(out / "grid.png", grid_image(images[: int(cfg.grid_max_images)], n))
    files["grid"] = str(out / "grid.png")
    if conds.labels is not None:
        files["labels"] = str(atomic_write_json(out / "labels.json", [conds.labels[i // n] for i in range(total)]))
    if conds.metadata is not None:
        from argen.eval.geneval import write_sample_folder

        for k, record in enumerate(conds.metadata):
            write_sample_folder(out / "geneval", k, record, list(images[k * n:(k + 1) * n]))
        files["geneval"] = str(out / "geneval")
    if not cfg.save_images:
        shutil.rmtree(out / "images")
        files.pop("images")
    return files


def _settings(cfg: DictConfig, sampler: Any, info: ExportInfo, stats: list[dict[str, float]], world: int,
              files: dict[str, Any], num_images: int, end_to_end: float) -> dict[str, Any]:
    """settings.json. Throughput counts the images this run drew (a resumed run keeps the others), over
    the sampler's time (slowest process) and over the wall time from sampling start to the last file."""
    total = {k: sum(s.get(k, 0.0) for s in stats) for k in stats[0] if not k.startswith("max_")}
    bounds = {k: max(s[k] for s in stats if k in s) for k in {k for s in stats for k in s if k.startswith("max_")}}
    wall = max(s["wall_seconds"] for s in stats)
    drawn = total["images"]
    return {
        "config": to_plain(cfg), "sampler": sampler.settings() if hasattr(sampler, "settings") else None,
        "seed": int(cfg.seed), "num_images": num_images, "resumed_images": num_images - int(drawn),
        "processes": world, "files": files,
        "generator": {"path": str(cfg.generator_path), "sha256": info.generator_sha256,
                      "step": info.generator_meta.get("global_step"), "layout": info.generator_meta.get("layout")},
        "tokenizer": {"path": info.tokenizer_path, "sha256": info.tokenizer_sha256},
        "stats": {"forward_passes_per_image": total["row_passes"] / max(total["images"], 1),
                  "tokens_per_pass": total["tokens"] / max(total["row_passes"], 1),
                  "forward_passes": total["forward_passes"],
                  "sampler_seconds": wall, "sampler_images_per_s": drawn / max(wall, 1e-9),
                  "end_to_end_seconds": end_to_end, "end_to_end_images_per_s": drawn / max(end_to_end, 1e-9),
                  **bounds},
        "versions": {"torch": torch.__version__},
    }


# argen-sample's own scalar keys: integers with their least value (None: any), and flags.
SAMPLE_INTEGERS = {"n_per_condition": 1, "batch_size": 1, "decode_batch_size": 1, "grid_max_images": 1,
                   "suite_per_tag": 1, "seed": None}
SAMPLE_FLAGS = ("overwrite", "save_images", "save_npz", "suite_fill")
HOLDOUT_MODES = ("include", "exclude", "only")


def check_sample_keys(cfg: DictConfig) -> None:
    """Refuse a wrong value of argen-sample's own keys by name, before any model is loaded."""
    for key, least in SAMPLE_INTEGERS.items():
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or (least is not None and value < least):
            raise ConfigError(f"`{key}` must be an integer{'' if least is None else f' >= {least}'} (got {value!r})")
    for key in SAMPLE_FLAGS:
        if not isinstance(cfg.get(key), bool):
            raise ConfigError(f"`{key}` must be true or false (got {cfg.get(key)!r})")
    if cfg.get("suite_holdout") not in HOLDOUT_MODES:
        raise ConfigError(f"`suite_holdout` must be one of {', '.join(HOLDOUT_MODES)} (got {cfg.get('suite_holdout')!r})")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Sample as configured; returns the settings written to settings.json (rank 0) or {}."""
    check_sample_keys(cfg)
    if cfg.get("resume") and cfg.overwrite:
        raise ConfigError("resume=true continues an interrupted run and overwrite=true discards what the folder "
                          "holds; pass one of them")
    device = pick_device(str(cfg.device))
    rank, world = init_distributed(device.type)
    out = Path(cfg.output_dir)
    lock = FolderLock(out) if rank == 0 else None  # rank 0 holds it for every process of a torchrun job
    try:
        _on_rank_zero(rank, lock.acquire if lock is not None else lambda: None)
        return _run_locked(cfg, device, out, rank, world)
    finally:
        if lock is not None:
            lock.release()
        _barrier()  # other ranks wait for rank 0's files, then every rank leaves the group cleanly
        if dist.is_initialized():
            dist.destroy_process_group()


def _run_locked(cfg: DictConfig, device: torch.device, out: Path, rank: int, world: int) -> dict[str, Any]:
    """Load, check, prepare the folder (rank 0), sample every process's shard, finish (rank 0)."""
    models = load_models(cfg.generator_path, tokenizer=cfg.tokenizer_path, device=device, dtype=str(cfg.dtype),
                         option="tokenizer_path")
    pipe = Pipeline(models.generator, models.tokenizer, sampler=cfg.sampler, info=models.info,
                    num_tokens=cfg.get("num_tokens"))
    info = models.info
    conds = build_conditions(cfg, pipe.generator, info)
    settings = image_settings(cfg, info, conds, device)
    total = len(conds) * int(cfg.n_per_condition)
    _on_rank_zero(rank, lambda: prepare_output(out, overwrite=bool(cfg.overwrite), resume=bool(cfg.get("resume")),
                                               settings=settings, total=total))
    _barrier()
    start = time.perf_counter()
    stats = _gather_stats(sample_shard(cfg, pipe, conds, out, rank, world))
    _barrier()
    return _finish(cfg, pipe.sampler, info, conds, out, stats, world, start) if rank == 0 else {}


def _finish(cfg: DictConfig, sampler: Any, info: ExportInfo, conds: Conditions, out: Path,
            stats: list[dict[str, float]], world: int, start: float) -> dict[str, Any]:
    """Rank 0: assemble the outputs, write settings.json (the run is complete from here), then evaluate
    if asked and add the evaluation to settings.json."""
    files = finalize(cfg, conds, out)
    settings = _settings(cfg, sampler, info, stats, world, files, len(conds) * int(cfg.n_per_condition),
                         time.perf_counter() - start)
    atomic_write_json(out / "settings.json", settings)
    remove_marker(out)
    if cfg.get("eval"):
        settings["evaluation"] = evaluate_samples(cfg, out, files)
        atomic_write_json(out / "settings.json", settings)
    speed = settings["stats"]
    log.info("%d images -> %s; this run drew %d: end_to_end_images_per_s %.2f (sampling, decoding and writing), "
             "sampler_images_per_s %.2f (sampler only)", settings["num_images"], out,
             settings["num_images"] - settings["resumed_images"], speed["end_to_end_images_per_s"],
             speed["sampler_images_per_s"])
    return settings


def evaluate_samples(cfg: DictConfig, out: Path, files: dict[str, Any]) -> dict[str, Any]:
    """Run the configured ``eval`` section (an argen-eval section) on what was just written."""
    from argen.eval.runners import run_section

    section = cfg.eval
    if section.kind == "prompts":
        if "geneval" not in files:
            raise ConfigError("a prompt-based evaluation needs GenEval metadata: sample with suite=shapes or "
                              "geneval_metadata=<file>")
        return run_section(section, files["geneval"], out)
    if "labels" in files and section.get("labels") is None:
        with open_dict(section):
            section.labels = files["labels"]
    return run_section(section, files.get("npz") or files["images"], out)


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
