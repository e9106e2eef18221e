"""Checkpoint export and loading."""

from argen.io.export import export_run, load

__all__ = ["export_run", "load"]
