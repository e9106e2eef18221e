"""Export a training run to a self-describing folder, and load any export back.

A run folder holds ``resolved_config.yaml`` and Lightning ``checkpoints/*.ckpt`` (resume
only). ``export_run`` turns one checkpoint into ``model.safetensors`` + ``config.yaml`` +
``meta.json`` (see ``tokenizers_vq.io``); ``load`` rebuilds the module with strict loading.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from hydra.utils import instantiate
from torch import nn

from tokenizers_vq.io import load_pretrained, read_meta, save_pretrained

log = logging.getLogger(__name__)

# stage -> (config node of the exported module, state-dict prefix inside the Lightning module)
_STAGE_MODULE = {"tokenizer": ("tokenizer", "tokenizer."), "generator": ("generator", "generator.")}


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _pick_checkpoint(run_dir: Path, ckpt: str) -> Path:
    if ckpt in ("last", "best"):  # best: written by export_checkpoint=best (the lowest validation loss)
        path = run_dir / "checkpoints" / f"{ckpt}.ckpt"
    else:
        path = Path(ckpt).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' not found; train first (argen-train ... name={run_dir.name}) "
                                f"or pass ckpt=<path to a .ckpt>")
    return path


def export_run(run_dir: str | Path, *, ckpt: str = "last", out: str | Path | None = None,
               weights: Literal["ema", "raw"] = "ema", overwrite: bool = False) -> Path:
    """Write ``<out or run_dir/export>`` from a run's checkpoint; returns the export folder."""
    from argen._version import __version__

    run_dir = Path(run_dir)
    config_file = run_dir / "resolved_config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: '{run_dir}' is not an argen-train run folder")
    cfg = yaml.safe_load(config_file.read_text())
    stage = cfg.get("stage", "tokenizer")
    node_key, prefix = _STAGE_MODULE[stage]
    node = cfg[node_key]
    ckpt_path = _pick_checkpoint(run_dir, ckpt)
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if weights == "ema" and checkpoint.get("ema"):
        state = checkpoint["ema"]["weights"]
    elif weights == "ema":
        log.warning("checkpoint %s has no EMA weights; exporting the raw weights", ckpt_path)
        state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    else:
        state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    module: nn.Module = instantiate(node, _convert_="all")
    module.load_state_dict(state, strict=True)
    if hasattr(module, "export_config"):  # a config that does not point at training-time folders (FlexTok's VAE)
        node = module.export_config(node)
    layout = getattr(module, "layout", None)
    meta: dict[str, Any] = {
        "argen_version": __version__, "git_sha": _git_sha(), "kind": stage, "name": cfg.get("name"),
        "weights": weights if checkpoint.get("ema") or weights == "raw" else "raw",
        "global_step": int(checkpoint.get("global_step", 0)), "epoch": int(checkpoint.get("epoch", 0)),
        "source_checkpoint": str(ckpt_path), "layout": layout.to_dict() if layout is not None else None,
        "image_size": getattr(module, "image_size", None), "data": cfg.get("data"), "seed": cfg.get("seed"),
    }
    out_dir = Path(out) if out else run_dir / "export"
    if stage == "generator":  # the tokenizer the codes came from: argen-sample decodes with it and checks it
        meta["tokenizer"] = export_record(cfg["tokenizer_path"], cfg.get("tokenizer_sha256"), run_dir, out_dir)
        meta["codes_dir"] = str(locate(cfg.get("codes_dir"), run_dir) or cfg.get("codes_dir"))
        if cfg.get("target_path"):  # a drafter: the generator it drafts for (speculative samplers check it)
            meta["target"] = export_record(cfg["target_path"], cfg.get("target_sha256"), run_dir, out_dir)
    save_pretrained(module, out_dir, config=node, meta=meta, overwrite=overwrite)
    log.info("exported %s (%s weights, step %d) to %s", stage, meta["weights"], meta["global_step"], out_dir)
    return out_dir


def locate(path: str | Path | None, run_dir: str | Path, sha256: str | None = None) -> Path | None:
    """Where a path recorded in a run's config is now: absolute as it is, else relative to the current
    folder or to one of the run folder's ancestors (argen-train resolved it against the folder it ran in,
    which is usually the one above ``outputs/``). An export folder must carry ``sha256`` when given."""
    if not path:
        return None
    recorded = Path(str(path)).expanduser()
    bases = [Path.cwd(), *Path(run_dir).resolve().parents] if not recorded.is_absolute() else [Path("/")]
    for base in bases:
        candidate = (base / recorded).resolve()
        if not candidate.exists():
            continue
        if sha256 is None or _export_sha(candidate) == sha256:
            return candidate
    return None


def _export_sha(folder: Path) -> str | None:
    try:
        return str(read_meta(folder).get("sha256"))
    except (OSError, ValueError):
        return None


def export_record(path: str, sha256: str | None, run_dir: Path, out_dir: Path) -> dict[str, Any]:
    """``{path, relpath, sha256}`` of an export another one depends on: the absolute path, and the path
    relative to the new export (still valid when the whole tree is moved or copied)."""
    found = locate(path, run_dir, sha256)
    if found is None:
        log.warning("%s (recorded by the run %s) is not found from here; the export records it as it is, and "
                    "argen-sample will need tokenizer_path= (or the matching override)", path, run_dir)
        return {"path": str(path), "relpath": None, "sha256": sha256}
    relpath = os.path.relpath(found, Path(out_dir).resolve())
    return {"path": str(found), "relpath": relpath, "sha256": sha256}


def resolve_record(export_dir: str | Path, record: dict[str, Any]) -> Path | None:
    """The folder a ``{path, relpath}`` record of ``export_dir/meta.json`` points to, if it exists:
    the recorded absolute path first, then the path relative to the export (a moved tree)."""
    candidates = [record.get("path")]
    if record.get("relpath"):
        candidates.append(str(Path(export_dir) / record["relpath"]))
    for candidate in candidates:
        if candidate and (Path(candidate) / "meta.json").is_file():
            return Path(candidate)
    return None


def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild any exported argen module (tokenizer or generator) from its folder, strictly."""
    return load_pretrained(path, map_location=map_location)


def tokenizer_hash(path: str | Path) -> str:
    """sha256 of an exported tokenizer's weights (identifies it in code caches)."""
    return str(read_meta(path)["sha256"])


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True))
