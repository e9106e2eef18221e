"""Samplers drive any generator through the protocol of :mod:`argen.core`."""

from argen.samplers.ancestral import AncestralSampler
from argen.samplers.guidance import Guidance
from argen.samplers.logits import LogitsProcessor
from argen.samplers.random import RowRandom

__all__ = ["AncestralSampler", "Guidance", "LogitsProcessor", "RowRandom"]
