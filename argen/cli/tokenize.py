"""argen-tokenize: encode a dataset once into code shards for generator training.

    argen-tokenize tokenizer_path=outputs/runs/shapes_vq/export data=shapes output_dir=outputs/codes/shapes
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader, Dataset

from argen.cli.common import CONFIG_DIR, ConfigError, build, to_plain
from argen.core.progress import progress
from argen.data.base import collate_samples
from argen.data.codes import MANIFEST, publish_cache, write_shard
from argen.io.export import load
from tokenizers_vq.io import read_meta

log = logging.getLogger("argen")


@torch.no_grad()
def encode_split(tokenizer: Any, dataset: Dataset, out: Path, *, batch_size: int, shard_size: int,
                 device: torch.device, desc: str) -> dict[str, Any]:
    """Encode ``dataset`` into ``out/shard_*.{safetensors,jsonl}``; returns the split's manifest entry."""
    out.mkdir(parents=True, exist_ok=True)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_samples)
    rows: dict[str, list[Any]] = {k: [] for k in ("tokens", "label", "index", "caption", "metadata")}
    shards, count, pending, skipped = [], 0, 0, 0
    for batch in progress(loader, desc=desc, unit="batch"):
        skipped += int(batch.get("num_skipped", 0))
        if "image" not in batch:
            continue
        images = batch["image"].to(device)
        # a stochastic encoder (a continuous tokenizer's posterior sample) draws from the dataset indices
        stochastic = bool(getattr(tokenizer, "stochastic_encode", False))
        tokens = (tokenizer.encode(images, seeds=batch["index"]) if stochastic else tokenizer.encode(images)).cpu()
        rows["tokens"].append(tokens)
        rows["label"].append(batch["label"])
        rows["index"].append(batch["index"])
        rows["caption"].extend(batch["caption"])
        rows["metadata"].extend(batch["metadata"])
        pending += tokens.shape[0]
        if pending >= shard_size:
            shards.append(f"shard_{len(shards):05d}")
            write_shard(out, shards[-1], rows)
            count += pending
            rows, pending = {k: [] for k in rows}, 0
    if pending:
        shards.append(f"shard_{len(shards):05d}")
        write_shard(out, shards[-1], rows)
        count += pending
    if skipped:
        log.warning("%s: skipped %d unreadable images", desc, skipped)
    return {"shards": shards, "count": count, "skipped": skipped}


def run(cfg: DictConfig) -> Path:
    out = Path(cfg.output_dir)
    if (out / MANIFEST).exists() and not cfg.overwrite:
        raise FileExistsError(f"code cache '{out}' already exists; pass overwrite=true to rebuild it")
    tokenizer_path = Path(cfg.tokenizer_path)
    meta = read_meta(tokenizer_path)
    device = torch.device(cfg.device)
    tokenizer = load(tokenizer_path, map_location=device)
    with open_dict(cfg):
        cfg.tokenizer.image_size = meta.get("image_size") or cfg.tokenizer.image_size
    data_cfg = to_plain(cfg.data)
    datamodule = build(cfg.data, "data")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    splits: dict[str, Any] = {}
    for split in cfg.splits:
        dataset = getattr(datamodule, f"{split}_set", None)
        if dataset is None:
            raise ConfigError(f"data config has no `{split}` dataset; choose splits among train/val/test that it defines")
        size = getattr(tokenizer, "image_size", None)
        first = dataset[0]
        if first is not None and size is not None and tuple(first["image"].shape[-2:]) != (size, size):
            raise ConfigError(f"data yields {tuple(first['image'].shape[-2:])} images but the tokenizer expects "
                              f"{size}x{size}; set the data image_size to {size}")
        splits[split] = encode_split(tokenizer, dataset, tmp / split, batch_size=cfg.batch_size,
                                     shard_size=cfg.shard_size, device=device, desc=f"tokenize {split}")
    publish_cache(tmp, out, layout=tokenizer.layout.to_dict(),
                  tokenizer={"sha256": meta["sha256"], "path": str(tokenizer_path.resolve()), "name": meta.get("name")},
                  preprocessing={"datasets": {s: data_cfg.get(s) for s in cfg.splits}, "augmentation": None,
                                 "tokens": getattr(tokenizer, "encoding", "code ids")},
                  splits=splits)
    log.info("wrote code cache %s: %s", out, {s: v["count"] for s, v in splits.items()})
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="tokenize")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
