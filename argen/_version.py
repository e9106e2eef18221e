"""The package version, recorded in every export's meta.json (``argen_version``).

A module of its own that imports nothing, so that every layer can read it (``argen.io`` for exports,
``argen.eval`` for feature nets) without importing the package root, which sits above them all.
"""

__version__ = "0.1.0"
