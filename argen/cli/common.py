"""Helpers shared by the CLIs: the config folder, config composition and clear config errors."""

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

log = logging.getLogger("argen")

# Inside the package, so that a wheel (not only an editable install) ships them.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def pick_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; cuda -> this process's GPU (LOCAL_RANK under torchrun)."""
    import os

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def pick_dtype(name: str) -> torch.dtype:
    """float32 | bfloat16, else a clear error."""
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(str(name))
    if dtype is None:
        raise ConfigError(f"dtype must be float32 or bfloat16, got {name!r}")
    return dtype


class ConfigError(ValueError):
    """A config that cannot be built, with the node that failed and what to change."""


def compose_config(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with command-line style overrides (no Hydra run)."""
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []))


def build(node: DictConfig | dict[str, Any], what: str, **kwargs: Any) -> Any:
    """``instantiate`` with an error that names the config node (e.g. ``tokenizer``)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        raise ConfigError(f"cannot build `{what}` from its config: {e.__cause__ or e}. "
                          f"Check the keys under `{what}` (they must equal the constructor's arguments).") from e


def to_plain(node: DictConfig) -> dict[str, Any]:
    """Resolved plain-dict copy of a config node (for export and manifests)."""
    container = OmegaConf.to_container(node, resolve=True)
    assert isinstance(container, dict)
    return container
