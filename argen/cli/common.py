"""Helpers shared by the CLIs: the config folder, config composition and clear config errors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("argen")

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


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
