"""Generators: each implements the protocol of :mod:`argen.core` (loss / plan / start / step)."""
