"""Exported model folders: ``model.safetensors`` + ``config.yaml`` + ``meta.json``.

The folder shape mirrors diffusers' ``save_pretrained``: the config is the resolved Hydra
node of the module (with ``_target_``), the weights are plain safetensors (no pickle), and
the config is also stored in the safetensors metadata so a lone file describes itself.
Loading = read config -> instantiate -> ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"
META_NAME = "meta.json"
# Only classes from these packages are instantiated from an exported config: an exported
# folder is data, and loading it must not run arbitrary callables.
TRUSTED_PREFIXES = ("argen.", "tokenizers_vq.")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path,
                     metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` with a canonical header, so equal content gives equal bytes.

    safetensors serialises ``__metadata__`` from a hash map whose order changes from process to
    process: the same tensors and config gave different file hashes at random, and every identity
    here (tokenizer -> code cache -> generator) is such a hash. The header is rewritten in place with
    sorted keys (same compact JSON, same length, so tensor offsets are untouched).
    """
    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= size:  # the usual case: a key reordering of serde's compact JSON, same length
            f.seek(8)
            f.write(text + b" " * (size - len(text)))
            return path
        data = f.read()  # escaping differed: rewrite the whole file (header padded to 8 bytes, as safetensors)
    text += b" " * (-len(text) % 8)
    tmp = path.with_name(path.name + ".canon")
    tmp.write_bytes(len(text).to_bytes(8, "little") + text + data)
    os.replace(tmp, path)
    return path


def _check_targets(node: Any, trusted: tuple[str, ...]) -> None:
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(trusted):
            raise ValueError(f"refusing to instantiate untrusted _target_ {target!r} from an exported config; "
                             f"allowed prefixes: {trusted}")
        for v in node.values():
            _check_targets(v, trusted)
    elif isinstance(node, list):
        for v in node:
            _check_targets(v, trusted)


def save_pretrained(module: nn.Module, directory: str | Path, *, config: dict[str, Any],
                    meta: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``module``'s state dict with its ``config`` (must carry ``_target_``) atomically.

    The folder is assembled in a temporary sibling and renamed into place, so a crash never
    leaves a half-written export. ``meta.json`` gains ``sha256`` of the weights file, a function of
    the tensors and the config alone (canonical header). Re-exporting the same weights with the same
    meta leaves an existing folder untouched, byte for byte.
    """
    directory = Path(directory)
    if "_target_" not in config:
        raise ValueError("config must be the module's resolved node with a _target_ key")
    if directory.exists() and not overwrite:
        raise FileExistsError(f"export folder {directory} already exists; pass overwrite=true to replace it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        config_text = yaml.safe_dump(config, sort_keys=False)
        save_safetensors(state, tmp / WEIGHTS_NAME, metadata={"config": config_text, "format": "pt"})
        (tmp / CONFIG_NAME).write_text(config_text)
        meta = dict(meta or {})
        meta["sha256"] = file_sha256(tmp / WEIGHTS_NAME)
        meta["num_parameters"] = sum(p.numel() for p in module.parameters())
        if _same_export(directory, meta):
            shutil.rmtree(tmp)  # nothing changed: the folder (and every hash pinned to it) stays byte-identical
            return directory
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


# Facts about the code that wrote an export, not about the export: they do not make it a new one.
_PROVENANCE_KEYS = ("argen_version", "git_sha")


def _same_export(directory: Path, meta: dict[str, Any]) -> bool:
    """Whether ``directory`` already holds these weights (sha256, which covers the config) and this meta."""
    try:
        old = json.loads((directory / META_NAME).read_text())
    except (OSError, ValueError):
        return False
    if old.get("sha256") != meta["sha256"] or file_sha256(directory / WEIGHTS_NAME) != meta["sha256"]:
        return False
    strip = lambda m: {k: v for k, v in m.items() if k not in _PROVENANCE_KEYS}  # noqa: E731
    return strip(old) == strip(json.loads(json.dumps(meta)))


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {directory} an exported model folder (argen-export)?")
    return json.loads(path.read_text())


def load_pretrained(path: str | Path, *, map_location: str | torch.device = "cpu",
                    trusted_prefixes: tuple[str, ...] = TRUSTED_PREFIXES) -> nn.Module:
    """Rebuild an exported module (folder, or its ``model.safetensors``) with strict loading."""
    from hydra.utils import instantiate

    path = Path(path).expanduser()
    directory = path.parent if path.suffix == ".safetensors" else path
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(
            f"no {WEIGHTS_NAME} in '{directory}': pass the folder written by argen-export "
            f"(it holds {WEIGHTS_NAME}, {CONFIG_NAME} and {META_NAME})")
    config_file = directory / CONFIG_NAME
    if config_file.is_file():
        config = yaml.safe_load(config_file.read_text())
    else:  # a lone weights file carries its config in the safetensors header
        from safetensors import safe_open
        with safe_open(str(weights), framework="pt") as f:
            config = yaml.safe_load((f.metadata() or {}).get("config", "null"))
        if config is None:
            raise FileNotFoundError(f"{config_file} missing and {weights} has no embedded config")
    _check_targets(config, trusted_prefixes)
    module = instantiate(config, _convert_="all")
    state = load_file(str(weights), device=str(map_location))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weights in {weights} do not match the config's module: "
                           f"missing keys {sorted(missing)[:10]}, unexpected keys {sorted(unexpected)[:10]}")
    return module.to(map_location).eval()
