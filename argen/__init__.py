"""argen: autoregressive image generation behind one protocol.

``argen.load(path)`` rebuilds any exported model folder (``argen-export``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from argen._version import __version__

if TYPE_CHECKING:
    from torch import nn


def load(path: Any, *, map_location: Any = "cpu") -> nn.Module:
    """Rebuild an exported tokenizer or generator from its folder with strict loading."""
    from argen.io.export import load as _load

    return _load(path, map_location=map_location)


__all__ = ["__version__", "load"]
