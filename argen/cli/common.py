"""What the CLIs share; the pieces live where the library can use them too (:mod:`argen.core.config`)."""

from argen.core.config import (CONFIG_DIR, build, compose_config, pick_device, pick_dtype, target_class,
                               to_plain)
from argen.core.errors import ConfigError, MissingFileError

__all__ = ["CONFIG_DIR", "ConfigError", "MissingFileError", "build", "compose_config", "pick_device", "pick_dtype",
           "target_class", "to_plain"]
