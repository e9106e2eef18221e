"""Pre-extracted token caches (``argen-tokenize``) and the dataset that reads them.

Layout of a cache folder::

    manifest.json              tokenizer sha256 + path, layout, preprocessing, splits, counts
    <split>/shard_00000.safetensors   tokens (N, L) int32 codes, or (N, L, C) float32 latents of a
                                      continuous layout; label (N,) int64, index (N,) int64
    <split>/shard_00000.jsonl         one {"caption", "metadata"} line per row

Generator training reads codes, never images; the manifest pins the tokenizer by the
sha256 of its weights so codes from another tokenizer are refused (users.md F20).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

MANIFEST = "manifest.json"
CACHE_VERSION = 1


class CodeCacheMismatchError(ValueError):
    """The cache was made by a different tokenizer (or preprocessing) than the one in use."""


def read_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in '{root}': build the cache first with "
                                f"argen-tokenize tokenizer_path=<export> data=<dataset> output_dir={root}")
    manifest = json.loads(path.read_text())
    if manifest.get("version") != CACHE_VERSION:
        raise CodeCacheMismatchError(f"code cache '{root}' has format version {manifest.get('version')}, "
                                     f"this argen reads version {CACHE_VERSION}; re-run argen-tokenize")
    return manifest


def check_manifest(manifest: dict[str, Any], *, root: str | Path, tokenizer_sha256: str | None = None,
                   preprocessing: dict[str, Any] | None = None) -> None:
    """Raise :class:`CodeCacheMismatchError` naming the fix if the cache does not match."""
    made_with = manifest["tokenizer"]["sha256"]
    if tokenizer_sha256 is not None and made_with != tokenizer_sha256:
        raise CodeCacheMismatchError(
            f"code cache '{root}' was made by tokenizer {made_with[:12]}… ({manifest['tokenizer'].get('path')}), "
            f"but the configured tokenizer is {tokenizer_sha256[:12]}…; re-run argen-tokenize with this tokenizer "
            f"(or point the generator at the tokenizer that made the cache)")
    if preprocessing is not None and manifest.get("preprocessing") != preprocessing:
        raise CodeCacheMismatchError(
            f"code cache '{root}' was made with preprocessing {manifest.get('preprocessing')}, expected "
            f"{preprocessing}; re-run argen-tokenize with the current data config")


def stored_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens as a cache stores them: integer codes as int32 (N, L), float latents as float32 (N, L, C)."""
    return tokens.to(torch.float32 if tokens.is_floating_point() else torch.int32).contiguous()


def loaded_tokens(stored: torch.Tensor, layout: dict[str, Any], root: str | Path) -> torch.Tensor:
    """Stored tokens as training reads them, as the cache's layout says: int64 codes or float32 latents."""
    continuous = layout.get("channels") is not None
    if continuous != stored.is_floating_point() or (continuous and stored.shape[-1] != layout["channels"]):
        raise CodeCacheMismatchError(f"code cache '{root}' holds {stored.dtype} tokens of shape {tuple(stored.shape)} "
                                     f"but its layout is {layout}; rebuild it with argen-tokenize")
    return stored.float() if continuous else stored.long()


def write_shard(out: Path, name: str, rows: dict[str, list[Any]]) -> None:
    """One shard: ``rows`` holds lists of tokens / label / index tensors and of caption / metadata."""
    from safetensors.torch import save_file

    tensors = {"tokens": stored_tokens(torch.cat(rows["tokens"])),
               "label": torch.cat(rows["label"]).long(), "index": torch.cat(rows["index"]).long()}
    save_file(tensors, str(out / f"{name}.safetensors"))
    with open(out / f"{name}.jsonl", "w") as f:
        for caption, metadata in zip(rows["caption"], rows["metadata"]):
            f.write(json.dumps({"caption": caption, "metadata": metadata}) + "\n")


def publish_cache(tmp: Path, out: Path, *, tokenizer: dict[str, Any], layout: dict[str, Any],
                  preprocessing: dict[str, Any], splits: dict[str, Any]) -> Path:
    """Write the manifest into the fully written cache folder ``tmp`` and move it to ``out`` (replacing
    an old cache only now, so a crash never leaves a half-written cache under ``out``)."""
    import shutil

    manifest = {"version": CACHE_VERSION, "tokenizer": tokenizer, "layout": layout,
                "preprocessing": preprocessing, "splits": splits}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


class CodeDataset(Dataset):
    """Rows of one split of a code cache: ``tokens`` ((L,) int64 codes or (L, C) float32 latents, as the
    cache's layout says), ``label``, ``caption``, ``metadata``, ``index``.

    tokenizer_sha256: when given, the cache must have been made by exactly that tokenizer.
    """

    def __init__(self, *, root: str, split: str = "train", tokenizer_sha256: str | None = None) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        check_manifest(self.manifest, root=self.root, tokenizer_sha256=tokenizer_sha256)
        if split not in self.manifest["splits"]:
            raise KeyError(f"split {split!r} is not in code cache '{root}' (has {sorted(self.manifest['splits'])})")
        tokens, labels, indices, extras = [], [], [], []
        for shard in self.manifest["splits"][split]["shards"]:
            tensors = load_file(str(self.root / split / f"{shard}.safetensors"))
            tokens.append(tensors["tokens"])
            labels.append(tensors["label"])
            indices.append(tensors["index"])
            with open(self.root / split / f"{shard}.jsonl") as f:
                extras.extend(json.loads(line) for line in f)
        self.tokens = loaded_tokens(torch.cat(tokens), self.manifest["layout"], self.root)  # (N, L[, C])
        self.labels = torch.cat(labels).long()
        self.indices = torch.cat(indices).long()
        self.extras = extras
        if not (len(self.tokens) == len(self.labels) == len(self.extras)):
            raise CodeCacheMismatchError(f"code cache '{root}' split {split!r} is inconsistent "
                                         f"({len(self.tokens)} token rows, {len(self.extras)} text rows); rebuild it")

    @property
    def layout(self) -> dict[str, Any]:
        return self.manifest["layout"]

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, Any]:
        extra = self.extras[i]
        return {"tokens": self.tokens[i], "label": self.labels[i], "caption": extra.get("caption", ""),
                "metadata": extra.get("metadata", ""), "index": self.indices[i]}
