"""The protocols every generator and sampler speak (see DESIGN.md, "The one idea")."""

from argen.core.condition import Condition
from argen.core.errors import ConfigError, IncompatibleError, MissingFileError
from argen.core.protocols import (Capabilities, Drafter, FlowGenerator, Generator, LossOutput, Requirements, Sampler,
                                  SampleResult, SamplingStats, StepOutput, bind, chain_order, check_compatible,
                                  needs)
from argen.core.state import DecodeState, KVCache

__all__ = ["Capabilities", "Condition", "ConfigError", "DecodeState", "Drafter", "FlowGenerator", "Generator",
           "IncompatibleError", "KVCache", "LossOutput", "MissingFileError", "Requirements", "SampleResult", "Sampler",
           "SamplingStats", "StepOutput", "bind", "chain_order", "check_compatible", "needs"]
