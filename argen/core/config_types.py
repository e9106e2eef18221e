"""Config nodes checked against the constructors they are for, before anything is built.

:func:`find_problem` walks a node; at each ``_target_`` it resolves the callable, compares the keys
with its signature and every given value with the parameter's annotation. It understands what a
config value can be checked against: bool, int, float (an int is a float; a bool is neither), str
(and paths), None / Optional, Literal, unions, and list / tuple / Sequence / dict / Mapping of those.
Any other annotation (a class, a callable, a protocol, a tensor) passes, so the check never refuses
what the constructor could take; the constructor keeps its own checks of ranges and meaning.
Nested ``_target_`` nodes, ``_partial_`` ones included, are checked where they stand.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Collection, Iterable, Iterator, Mapping, MutableMapping, MutableSequence, Sequence
from pathlib import PurePath
from typing import Any, Literal, Union

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

HYDRA_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})
UNIONS = (Union, types.UnionType)
SEQUENCES = (list, tuple, Sequence, MutableSequence)
MAPPINGS = (dict, Mapping, MutableMapping)
SCALARS: dict[Any, typing.Callable[[Any], bool]] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def locate(node: Mapping[str, Any] | DictConfig) -> Any:
    """The callable a node's ``_target_`` names (a dotted path, or the callable itself)."""
    target = node["_target_"]
    return target if callable(target) else get_object(str(target))


def find_problem(node: Any, where: str, given: Collection[str] = ()) -> str | None:
    """The first unknown key or ill-typed value under ``node``, named by its key (``sampler.cfg_scale``),
    or None. ``where`` is the node's own key; ``given``: arguments passed besides the config (not checked)."""
    if isinstance(node, (list, ListConfig)):
        return _first(find_problem(item, f"{where}[{i}]") for i, item in _items(node))
    if not isinstance(node, (dict, DictConfig)):
        return None
    if "_target_" not in node:
        return _first(find_problem(value, f"{where}.{key}") for key, value in _items(node))
    return _call_problem(node, where, given)


def _call_problem(node: Mapping[str, Any] | DictConfig, where: str, given: Collection[str]) -> str | None:
    try:
        target = locate(node)
        params, hints = _parameters(target)
    except Exception:  # an import or signature that fails: instantiate reports it in its own words
        return None
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    recursive = node.get("_recursive_", True) is not False
    for key, value in ((str(k), v) for k, v in _items(node)):
        if key in HYDRA_KEYS or key in given:
            continue
        if key not in named and not open_ended:
            return f"unknown key `{where}.{key}`; `{_name(target)}` accepts: {', '.join(named)}"
        if key in named and not (value is None and params[key].default is None):
            problem = _mismatch(value, hints.get(key, Any), f"{where}.{key}")
            if problem:
                return problem
        if recursive and (problem := find_problem(value, f"{where}.{key}")):
            return problem
    return None


def _parameters(target: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    """A callable's parameters and type hints. A class whose ``__init__`` takes ``**kwargs`` (a sampler
    configured on a shared loop forwards them to its base class) still accepts any key, but the keys its
    nearest base's ``__init__`` declares are type-checked against that base's annotations."""
    params, hints = dict(inspect.signature(target).parameters), _hints(target)
    if isinstance(target, type) and any(p.kind is p.VAR_KEYWORD for p in params.values()):
        base = next((b for b in target.__mro__[1:] if "__init__" in vars(b) and b is not object), None)
        if base is not None:
            extra = {n: p for n, p in inspect.signature(base).parameters.items()
                     if n not in params and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
            params.update(extra)
            hints = {**{k: v for k, v in _hints(base).items() if k in extra}, **hints}
    return params, hints


def _hints(target: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
    except Exception:  # an annotation that does not resolve at run time (a TYPE_CHECKING import): keys only
        return {}


def _items(node: Any) -> Iterator[tuple[Any, Any]]:
    """(key or index, resolved value) of a dict or list node; mandatory (``???``) and unresolvable values
    are passed over, for instantiate to name."""
    keys = range(len(node)) if isinstance(node, (list, tuple, ListConfig)) else list(node)
    for key in keys:
        if isinstance(node, (DictConfig, ListConfig)) and OmegaConf.is_missing(node, key):
            continue
        try:
            yield key, node[key]
        except OmegaConfBaseException:
            continue


def _first(problems: Iterable[str | None]) -> str | None:
    return next((p for p in problems if p), None)


def _name(target: Any) -> str:
    return str(getattr(target, "__qualname__", target))


def _mismatch(value: Any, annotation: Any, key: str) -> str | None:
    if fits(value, annotation):
        return None
    return _item_problem(value, annotation, key) or (
        f"`{key}` must be {describe(annotation)} (got {_shown(value)}, {_kind(value)})")


def fits(value: Any, annotation: Any) -> bool:
    """Whether a config value can be passed where ``annotation`` is expected (True when it cannot tell)."""
    if annotation in (Any, object) or (isinstance(value, (dict, DictConfig)) and "_target_" in value):
        return True  # a nested object node is checked where it stands
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in UNIONS:
        return any(fits(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if annotation is type(None) or annotation is None:
        return value is None
    if annotation in SCALARS:
        return SCALARS[annotation](value)
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return isinstance(value, (str, PurePath))
    if (origin or annotation) in SEQUENCES:
        items = _item_annotations(annotation, value)
        return items is not None and all(fits(v, items[i]) for i, v in _items(value))
    if (origin or annotation) in MAPPINGS:
        item = args[1] if len(args) == 2 else Any
        return isinstance(value, (dict, DictConfig)) and all(fits(v, item) for _, v in _items(value))
    return True


def _item_annotations(annotation: Any, value: Any) -> list[Any] | None:
    """The annotation of each item of a list value for a sequence annotation; None if it cannot fit."""
    if not isinstance(value, (list, tuple, ListConfig)):
        return None
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple and args and args[-1] is not Ellipsis:
        return list(args) if len(args) == len(value) else None
    return [args[0] if args else Any] * len(value)


def _item_problem(value: Any, annotation: Any, key: str) -> str | None:
    """For a list (dict) given where a sequence (mapping) is expected: the first item that does not fit."""
    members = typing.get_args(annotation) if typing.get_origin(annotation) in UNIONS else (annotation,)
    for member in members:
        origin = typing.get_origin(member) or member
        items = _item_annotations(member, value) if origin in SEQUENCES else None
        if items is not None:
            return _first(_mismatch(v, items[i], f"{key}[{i}]") for i, v in _items(value))
        if origin in MAPPINGS and isinstance(value, (dict, DictConfig)):
            item = typing.get_args(member)[1] if len(typing.get_args(member)) == 2 else Any
            return _first(_mismatch(v, item, f"{key}.{k}") for k, v in _items(value))
    return None


def describe(annotation: Any) -> str:
    """``float``, ``int | null``, ``one of 'sample', 'greedy'``, ``list[int]``: an annotation in config words."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in UNIONS:
        return " | ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if annotation is type(None) or annotation is None:
        return "null"
    if origin is not None and args:
        inner = ", ".join("..." if a is Ellipsis else describe(a) for a in args)
        return f"{getattr(origin, '__name__', origin)}[{inner}]"
    return str(getattr(annotation, "__name__", annotation))


def _shown(value: Any) -> str:
    plain = OmegaConf.to_container(value, resolve=False) if isinstance(value, (DictConfig, ListConfig)) else value
    return repr(plain)


def _kind(value: Any) -> str:
    if isinstance(value, ListConfig):
        return "list"
    return "dict" if isinstance(value, DictConfig) else type(value).__name__


def find_key(node: Any, where: str, argument: str, value: object) -> str | None:
    """The full key (``eval.extractor.weights_path``) of the first ``argument: value`` under ``node``."""
    if isinstance(node, (list, ListConfig)):
        return _first(find_key(item, f"{where}[{i}]", argument, value) for i, item in _items(node))
    if not isinstance(node, (dict, DictConfig)):
        return None
    for key, item in _items(node):
        if key == argument and str(item) == str(value):
            return f"{where}.{key}"
        found = find_key(item, f"{where}.{key}", argument, value)
        if found:
            return found
    return None
