"""Shared machinery of the official-checkpoint converters (:mod:`argen.io.llamagen`,
:mod:`argen.io.var`): pattern key tables, safe checkpoint reading, config-inference helpers.

Key tables map official patterns to argen patterns: ``{i}`` stands for a block index, ``*`` for any
remaining suffix; a :class:`Drop` value marks an official entry that is not carried over (and why).
A :class:`KeyLedger` applies them, and the structural steps beside them, keeping the record of what
became of every key (:class:`KeyReport`), which converted exports store in meta.json.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Drop:
    """A table value for an official entry that is not carried over, with the reason the record gives."""

    why: str


KeyTable = Mapping[str, str | Drop]


@dataclass(frozen=True)
class KeyReport:
    """What one direction of a conversion did with every key: ``kept`` (same name, same tensor),
    ``renamed`` (from -> to, same tensor), ``transformed`` ({from, to, how}: values computed from
    source keys), ``dropped`` (source key -> why) and ``created`` (key -> how its value was made)."""

    direction: str
    kept: list[str]
    renamed: dict[str, str]
    transformed: list[dict[str, Any]]
    dropped: dict[str, str]
    created: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "renamed": self.renamed, "transformed": self.transformed,
                "dropped": self.dropped, "created": self.created}

    def summary(self) -> str:
        return (f"{self.direction}: {len(self.kept)} kept, {len(self.renamed)} renamed, {len(self.transformed)} "
                f"transformed, {len(self.dropped)} dropped, {len(self.created)} created")


class KeyLedger:
    """A state dict on its way from one naming to another. Every entry remembers the source keys and
    the transformations it comes from, so the :class:`KeyReport` is true by construction: a step
    that forgets to declare what it did cannot make a key look merely renamed."""

    def __init__(self, state: Mapping[str, Tensor], direction: str) -> None:
        self.direction = direction
        self.state: dict[str, Tensor] = dict(state)
        self._origin: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {k: ((k,), ()) for k in state}
        self._dropped: dict[str, str] = {}

    def rename(self, table: KeyTable, *, what: str, drop: Mapping[str, str] | None = None,
               hint: str = "is this the right kind of checkpoint (GPT vs VQ tokenizer)?") -> None:
        """Rename every key by ``table`` (pattern -> pattern | Drop); keys matching a ``drop`` pattern
        (-> why) are dropped too; a key no rule matches is an error."""
        rules = [(compile_pattern(src), dst) for src, dst in table.items()]
        rules += [(compile_pattern(p), Drop(why)) for p, why in (drop or {}).items()]
        moves: dict[str, str] = {}
        unknown: list[str] = []
        for key in list(self.state):
            match = next(((m, dst) for rx, dst in rules if (m := rx.match(key))), None)
            if match is None:
                unknown.append(key)
            elif isinstance(match[1], Drop):
                self.drop(key, match[1].why)
            else:
                moves[key] = fill_pattern(match[1], match[0])
        if unknown:
            raise KeyError(f"{len(unknown)} key(s) have no entry in the {what} conversion table, e.g. "
                           f"{sorted(unknown)[:8]}: {hint}")
        self.move(moves)

    def move(self, moves: Mapping[str, str]) -> None:
        """Rename keys (old -> new; others stay); the tensors are untouched."""
        renamed = [moves.get(k, k) for k in self.state]
        if len(set(renamed)) != len(renamed):
            clash = sorted(k for k in set(renamed) if renamed.count(k) > 1)
            raise KeyError(f"{self.direction}: several keys map to {clash[:4]}")
        self.state = {moves.get(k, k): v for k, v in self.state.items()}
        self._origin = {moves.get(k, k): v for k, v in self._origin.items()}

    def transform(self, sources: Sequence[str], outputs: Mapping[str, Tensor], how: str) -> None:
        """Replace ``sources`` by ``outputs``, computed from them as ``how`` says."""
        srcs = tuple(dict.fromkeys(s for key in sources for s in self._origin[key][0]))
        hows = tuple(dict.fromkeys(h for key in sources for h in self._origin[key][1])) + (how,)
        for key in sources:
            del self.state[key], self._origin[key]
        for key, value in outputs.items():
            self._claim(key)
            self.state[key], self._origin[key] = value, (srcs, hows)

    def create(self, key: str, value: Tensor, how: str) -> None:
        self._claim(key)
        self.state[key], self._origin[key] = value, ((), (how,))

    def _claim(self, key: str) -> None:
        if key in self.state:  # a step must not silently overwrite an entry another step made
            raise KeyError(f"{self.direction}: '{key}' is already in the state dict, so converting another key "
                           f"into it would overwrite it: does the checkpoint mix official and argen names?")

    def drop(self, key: str, why: str) -> None:
        for source in self._origin[key][0]:
            self._dropped[source] = why
        del self.state[key], self._origin[key]

    def report(self) -> KeyReport:
        kept: list[str] = []
        renamed: dict[str, str] = {}
        created: dict[str, str] = {}
        groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
        for key, (srcs, hows) in self._origin.items():
            if not srcs:
                created[key] = "; ".join(hows)
            elif not hows and len(srcs) == 1:
                if srcs[0] == key:
                    kept.append(key)
                else:
                    renamed[srcs[0]] = key
            else:
                groups.setdefault((srcs, hows), []).append(key)
        transformed = [{"from": sorted(srcs), "to": sorted(outs), "how": "; ".join(hows)}
                       for (srcs, hows), outs in groups.items()]
        return KeyReport(self.direction, sorted(kept), dict(sorted(renamed.items())),
                         sorted(transformed, key=lambda t: t["from"]), dict(sorted(self._dropped.items())),
                         dict(sorted(created.items())))

    def result(self, reports: list[KeyReport] | None = None) -> dict[str, Tensor]:
        """The converted state dict (a plain dict: it pickles as one, so ``torch.load(weights_only=True)``
        reads a saved copy); its :class:`KeyReport` is appended to ``reports`` when given."""
        report = self.report()
        log.debug("%s", report.summary())
        if reports is not None:
            reports.append(report)
        return self.state


def inverse_table(table: KeyTable) -> dict[str, str]:
    return {dst: src for src, dst in table.items() if isinstance(dst, str)}


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
    """The module ``config`` describes, on the meta device: its key names and shapes, for free."""
    from hydra.utils import instantiate

    with torch.device("meta"):
        return instantiate(config, _convert_="all")


@dataclass
class Conversion:
    """An official state dict converted in memory: the argen module (strictly loaded, eval mode), the
    config node an export stores with it, and the key record of both directions (official -> argen,
    then back)."""

    module: nn.Module
    config: dict[str, Any]
    reports: list[KeyReport]


def build_and_load(build: dict[str, Any] | Callable[[], nn.Module], state: Mapping[str, Tensor]) -> nn.Module:
    """The module (a config node, instantiated, or ``build()``) on the CPU with ``state`` loaded strictly,
    in eval mode: real tensors everywhere, the buffers argen recomputes (RoPE tables, masks) included,
    exactly as ``argen.load`` rebuilds an export. Costs the module's memory beside ``state``'s."""
    from hydra.utils import instantiate

    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: leave the caller's RNG as it was
        module = instantiate(build, _convert_="all") if isinstance(build, dict) else build()
    module.load_state_dict(state, strict=True)
    return module.eval()


def save_conversion(conversion: Conversion, path: Path, out_dir: str | Path, *, kind: str, source: str,
                    describe: str, overwrite: bool, **extra: Any) -> Path:
    """Write a conversion as an export folder (model.safetensors, config.yaml, meta.json with the key
    record) and log one line: what it is and, per direction, how many keys went which way."""
    from tokenizers_vq.io import save_pretrained

    meta = conversion_meta(path, kind, conversion.module.layout, conversion.reports, source, **extra)
    out = save_pretrained(conversion.module, out_dir, config=conversion.config, meta=meta, overwrite=overwrite)
    log.info("converted %s (%s) to %s; %s", path, describe, out, "; ".join(r.summary() for r in conversion.reports))
    return out


def conversion_meta(path: Path, kind: str, layout: Any, reports: Sequence[KeyReport], source: str,
                    **extra: Any) -> dict[str, Any]:
    """meta.json of a converted export: what it is, where it came from, and per direction (official ->
    argen first, then back) what became of every key; ``dropped_keys`` lists the official keys not
    carried into argen (the first direction's ``dropped``)."""
    from argen._version import __version__

    return {"kind": kind, "layout": layout.to_dict(), "source": str(path), "converted_from": source,
            "argen_version": __version__, "dropped_keys": sorted(reports[0].dropped),
            "conversion": {r.direction: r.to_dict() for r in reports}, **extra}
