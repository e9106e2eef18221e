"""Shared machinery of the official-checkpoint converters (:mod:`argen.io.llamagen`,
:mod:`argen.io.var`): pattern key tables, safe checkpoint reading, config-inference helpers.

Key tables map official patterns to argen patterns: ``{i}`` stands for a block index, ``*`` for any
remaining suffix; a value of None marks an official entry that is not a weight (dropped).
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

_WRAPPERS = ("model", "module", "state_dict", "ema")  # LlamaGen's sample scripts try the first three
_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers


# ---- key renaming -------------------------------------------------------------------------------
def compile_pattern(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\{i\}|\*)", pattern)
    body = "".join(r"(?P<i>\d+)" if p == "{i}" else r"(?P<rest>.+)" if p == "*" else re.escape(p) for p in parts)
    return re.compile(body + r"\Z")


def fill_pattern(pattern: str, match: re.Match[str]) -> str:
    groups = match.groupdict()
    return pattern.replace("{i}", groups.get("i") or "").replace("*", groups.get("rest") or "")


def rename_keys(state: Mapping[str, Tensor], table: Mapping[str, str | None], drop: tuple[str, ...],
            what: str) -> tuple[dict[str, Tensor], list[str]]:
    """Rename ``state`` by ``table`` (pattern -> pattern | None); keys matching ``drop`` or mapped
    to None are left out and returned; any other unmatched key is an error."""
    rules = [(compile_pattern(src), dst) for src, dst in table.items()] + [(compile_pattern(p), None) for p in drop]
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for key, value in state.items():
        for rx, dst in rules:
            m = rx.match(key)
            if m:
                if dst is None:
                    dropped.append(key)
                else:
                    out[fill_pattern(dst, m)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"{len(unknown)} key(s) have no entry in the {what} conversion table, e.g. "
                       f"{sorted(unknown)[:8]}: is this the right kind of checkpoint (GPT vs VQ tokenizer)?")
    if dropped:
        log.info("%s conversion dropped %d non-weight key(s): %s", what, len(dropped), sorted(dropped)[:8])
    return out, dropped


def inverse_table(table: Mapping[str, str | None]) -> dict[str, str]:
    return {dst: src for src, dst in table.items() if dst is not None}


def require_key(state: Mapping[str, Tensor], key: str, what: str) -> Tensor:
    if key not in state:
        raise KeyError(f"the state dict has no '{key}' ({what}); found e.g. {sorted(state)[:6]}")
    return state[key]


def unwrap_state_dict(obj: Any, *, source: str = "checkpoint", entry: str | None = None) -> dict[str, Tensor]:
    """The tensor dict inside a loaded checkpoint: ``obj[entry]``, else the first of "model",
    "module", "state_dict", "ema" present (DDP checkpoints), else ``obj`` itself (FSDP ones);
    DDP/compile prefixes ("module.", "_orig_mod.") are stripped."""
    if not isinstance(obj, Mapping):
        raise TypeError(f"{source} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)")
    if entry is not None:
        if entry not in obj:
            raise KeyError(f"{source} has no entry '{entry}'; it has {sorted(map(str, obj))[:10]}")
        obj = obj[entry]
    else:
        obj = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), obj)
    if not isinstance(obj, Mapping):
        raise TypeError(f"{source}: entry '{entry}' is a {type(obj).__name__}, not a state dict")
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad or not obj:
        raise TypeError(f"{source} is not a state dict: entries {bad[:6] or '(none)'} are not name -> tensor; "
                        f"pick the weights with entry=... (top-level entries: {sorted(map(str, obj))[:10]})")
    state = dict(obj)
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_official_checkpoint(path: str | Path, *, entry: str | None = None) -> dict[str, Tensor]:
    """Load an official ``.pt``/``.pth`` on the CPU without executing pickled code
    (``weights_only=True``; an ``args`` Namespace saved by LlamaGen's trainers is allowed)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' not found; download the official weights first and pass "
                                f"their path")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path} contains pickled objects other than tensors, which argen refuses to load "
                         f"(weights_only=True). If you trust the file, re-save only its weights: "
                         f"torch.save({{'model': torch.load(p, weights_only=False)['model']}}, p2). Cause: {e}") from e
    return unwrap_state_dict(obj, source=str(path), entry=entry)


def indexed_count(state: Mapping[str, Tensor], prefix: str, names: tuple[str, ...], model: str) -> int:
    """Number of ``{prefix}.{i}.*`` blocks, after checking every block has all of ``names``."""
    ids = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    if not ids:
        raise KeyError(f"the state dict has no '{prefix}.{{i}}.*' keys: not a {model} checkpoint")
    count = max(ids) + 1
    for i in range(count):
        for name in names:
            if f"{prefix}.{i}.{name}" not in state:
                raise KeyError(f"the {model} state dict lacks '{prefix}.{i}.{name}' ({prefix} 0..{count - 1} "
                               f"inferred from the keys): truncated or not a {model} checkpoint")
    return count




def build_on_meta(config: dict[str, Any]) -> nn.Module:
    """The module ``config`` describes, on the meta device (filled by ``load_state_dict(assign=True)``)."""
    from hydra.utils import instantiate

    with torch.device("meta"):
        return instantiate(config, _convert_="all")


def conversion_meta(path: Path, kind: str, layout: Any, dropped: list[str], source: str,
                    **extra: Any) -> dict[str, Any]:
    """meta.json of a converted export: what it is, where it came from, what was dropped."""
    from argen._version import __version__

    return {"kind": kind, "layout": layout.to_dict(), "source": str(path), "converted_from": source,
            "argen_version": __version__, "dropped_keys": sorted(dropped), **extra}
