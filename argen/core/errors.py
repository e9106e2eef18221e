"""Errors shared across layers that carry what the caller needs to word the fix.

They live in the lowest layer so that any layer may raise them and the CLIs (the top) catch them.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config that cannot be built, with the node that failed and what to change."""


class IncompatibleError(TypeError):
    """A sampler was paired with a generator that lacks a capability it needs."""


class MissingFileError(FileNotFoundError):
    """A file or folder that a constructor argument names does not exist.

    ``message`` may hold ``{key}`` where the fix names the setting; ``argument`` and ``value`` say which
    argument held the path, so a caller that built the object from a config (``argen.cli.common.build``)
    can find the config key it came from and pass it to :meth:`explain`. ``str()`` names the argument.
    """

    def __init__(self, message: str, *, argument: str, value: object) -> None:
        self.template, self.argument, self.value = message, argument, value
        super().__init__(self.explain(argument))

    def explain(self, key: str) -> str:
        """The message with the setting named as ``key`` (a config key such as ``eval.extractor.path``)."""
        return self.template.replace("{key}", f"`{key}`")
