"""Helpers shared by the CLIs: the config folder, config composition and clear config errors.

:class:`ConfigError` lives in :mod:`argen.core.errors` (the library raises it too); it is imported here
for the CLIs, the tests and the scripts that know it as ``argen.cli.common.ConfigError``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from argen.core.config_types import find_key, find_problem, locate
from argen.core.errors import ConfigError, MissingFileError

log = logging.getLogger("argen")

# Inside the package, so that a wheel (not only an editable install) ships them.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")  # argen/configs


def pick_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; cuda -> this process's GPU (LOCAL_RANK under torchrun)."""
    import os

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device={name} is not a device: use device=auto, device=cpu or device=cuda ({e})") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        # Checked here: torch would only fail at the first tensor moved, with its driver's words.
        raise ConfigError(f"device={name}, but no CUDA device is available to this process (torch "
                          f"{torch.__version__}, CUDA build {torch.version.cuda}); use device=cpu or device=auto")
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def pick_dtype(name: str) -> torch.dtype:
    """float32 | bfloat16, else a clear error."""
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(str(name))
    if dtype is None:
        raise ConfigError(f"dtype must be float32 or bfloat16, got {name!r}")
    return dtype


def compose_config(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with command-line style overrides (no Hydra run)."""
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []))


def build(node: DictConfig | dict[str, Any], what: str, **kwargs: Any) -> Any:
    """``instantiate`` the node whose key is ``what`` (e.g. ``sampler``), after checking its keys and values
    against the constructors' signatures (:mod:`argen.core.config_types`); every error names the key."""
    problem = find_problem(node, what, given=kwargs)
    if problem:
        raise ConfigError(f"cannot build `{what}` from its config: {problem}")
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, MissingFileError):  # name the setting by its config key
            key = find_key(node, what, cause.argument, cause.value) or cause.argument
            raise ConfigError(f"cannot build `{what}` from its config: {cause.explain(key)}") from e
        raise ConfigError(f"cannot build `{what}` from its config: {cause}") from e


def target_class(node: DictConfig, what: str) -> Any:
    """The callable ``node._target_`` names, to consult before building (e.g. a sampler's requirements)."""
    try:
        return locate(node)
    except Exception as e:  # hydra raises ImportError or its own errors for a bad path
        raise ConfigError(f"`{what}._target_` {node.get('_target_')!r} cannot be imported: {e}") from e


def to_plain(node: DictConfig) -> dict[str, Any]:
    """Resolved plain-dict copy of a config node (for export and manifests)."""
    container = OmegaConf.to_container(node, resolve=True)
    assert isinstance(container, dict)
    return container
