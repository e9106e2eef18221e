"""argen-distill: self-distilled training data for a drafter (EAGLE / LANTERN train their drafters on
what the target generates). The exported generator samples tokens for the conditions of an existing
code cache, and the samples become a new code cache made "by" the same tokenizer.

    argen-distill generator_path=outputs/runs/shapes_raster/export codes_dir=outputs/codes/shapes \\
        name=shapes_distilled sampler.cfg_scale=3.0
    argen-train experiment=shapes_raster_drafter

A layer over :mod:`argen.pipeline`, as argen-sample is: the generator is loaded with the tokenizer its
meta.json records (``+tokenizer_path=DIR``: another folder with the same sha256), bound to it where it or
the sampler needs it (VAR's accumulate step, LANTERN's codebook), and sample ``i`` of a split is the
pipeline's sample ``i`` of the split's conditions (its own seed). What is its own: the conditions taken
from the code cache, and the cache written.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from argen.cli.common import CONFIG_DIR, ConfigError, to_plain
from argen.core.progress import progress
from argen.data.codes import MANIFEST, CodeDataset, check_manifest, publish_cache, read_manifest, write_shard
from argen.pipeline import Pipeline, conditions_for, load_models
from tokenizers_vq.io import read_meta

log = logging.getLogger("argen")

SPLIT_SEED_OFFSET = {"train": 0, "val": 1_000_003, "test": 2_000_003}


def _conditions(source: CodeDataset, count: int, class_conditional: bool) -> tuple[list[Any], list[int]]:
    """The first ``count`` conditions of ``source`` (cycled): class ids or captions, and source rows."""
    rows = [i % len(source) for i in range(count)]
    if class_conditional:
        labels = source.labels
        if int(labels.min()) < 0:
            raise ConfigError(f"the generator is class-conditional but {source.root} has no class labels")
        return [int(labels[i]) for i in rows], rows
    captions = [source.extras[i].get("caption", "") for i in rows]
    if not all(captions):
        raise ConfigError(f"the generator is text-conditional but {source.root} has rows without captions")
    return captions, rows


@torch.no_grad()
def distill_split(cfg: DictConfig, pipe: Pipeline, source: CodeDataset, count: int, out: Path,
                  seed: int) -> dict[str, Any]:
    """Sample ``count`` images' tokens for the conditions of ``source`` (in order, cycled) into a split
    folder ``out`` of shards; sample ``i`` is the pipeline's sample ``i`` with ``seed``."""
    out.mkdir(parents=True, exist_ok=True)
    class_conditional = getattr(pipe.generator, "num_classes", None) is not None
    conds, rows = _conditions(source, count, class_conditional)
    request = conditions_for(pipe.generator, conds)  # checked once, one condition per sample
    buffer: dict[str, list[Any]] = {k: [] for k in ("tokens", "label", "index", "caption", "metadata")}
    shards, pending, written = [], 0, 0
    bar = progress(total=count, desc=f"distill {out.name}", unit="img")
    for start in range(0, count, int(cfg.batch_size)):
        ids = list(range(start, min(start + int(cfg.batch_size), count)))
        part = [conds[i] for i in ids]
        result = pipe.sample_tokens(request, seed=seed, indices=ids, batch_size=int(cfg.batch_size))
        buffer["tokens"].append(result.tokens.cpu())
        buffer["label"].append(torch.tensor(part) if class_conditional else torch.full((len(ids),), -1))
        buffer["index"].append(torch.tensor([int(source.indices[rows[i]]) for i in ids]))
        buffer["caption"].extend("" if class_conditional else c for c in part)
        buffer["metadata"].extend({"sample": i} for i in ids)
        pending += len(ids)
        bar.update(len(ids))
        if pending >= int(cfg.shard_size) or ids[-1] == count - 1:
            shards.append(f"shard_{len(shards):05d}")
            write_shard(out, shards[-1], buffer)
            written += pending
            buffer, pending = {k: [] for k in buffer}, 0
    bar.close()
    return {"shards": shards, "count": written, "skipped": 0}


def load_pipeline(cfg: DictConfig) -> tuple[Pipeline, dict[str, Any]]:
    """The exported generator with its tokenizer (bound where needed) and the configured sampler, after
    checking that the code cache holds that tokenizer's codes; and the cache's manifest."""
    gen_dir = Path(cfg.generator_path)
    meta = read_meta(gen_dir)
    if meta.get("kind") != "generator":
        raise ConfigError(f"{gen_dir} is an exported {meta.get('kind')}, not a generator")
    manifest = read_manifest(cfg.codes_dir)
    check_manifest(manifest, root=cfg.codes_dir, tokenizer_sha256=(meta.get("tokenizer") or {}).get("sha256"))
    models = load_models(gen_dir, tokenizer=cfg.get("tokenizer_path"), device=str(cfg.device), dtype=str(cfg.dtype),
                         option="+tokenizer_path")
    return Pipeline(models.generator, models.tokenizer, sampler=cfg.sampler, info=models.info), manifest


def run(cfg: DictConfig) -> Path:
    out = Path(cfg.output_dir)
    if (out / MANIFEST).exists() and not cfg.overwrite:
        raise FileExistsError(f"code cache '{out}' already exists; pass overwrite=true to rebuild it")
    pipe, manifest = load_pipeline(cfg)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    splits: dict[str, Any] = {}
    for split, count in cfg.splits.items():
        if split not in SPLIT_SEED_OFFSET:
            raise ConfigError(f"unknown split {split!r}; choose among {list(SPLIT_SEED_OFFSET)}")
        source = CodeDataset(root=cfg.codes_dir, split=split)
        splits[split] = distill_split(cfg, pipe, source, int(count), tmp / split,
                                      int(cfg.seed) + SPLIT_SEED_OFFSET[split])
    info = pipe.info
    assert info is not None
    distilled = {"generator": str(Path(cfg.generator_path).resolve()), "generator_sha256": info.generator_sha256,
                 "conditions_from": str(Path(cfg.codes_dir).resolve()), "sampler": pipe.sampler.settings(),
                 "seed": int(cfg.seed)}
    publish_cache(tmp, out, tokenizer=manifest["tokenizer"], layout=manifest["layout"],
                  preprocessing={"distilled": distilled, "config": to_plain(cfg)}, splits=splits)
    log.info("wrote self-distilled code cache %s: %s", out, {s: v["count"] for s, v in splits.items()})
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="distill")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
