"""Generator and Sampler protocols (DESIGN.md, Interfaces), and the small results they return.

A generator predicts groups of layout positions, one group per step (``plan``). A sampler walks
that plan through ``start``/``step`` only, so any sampler drives any generator whose
:class:`Capabilities` meet the sampler's :class:`Requirements`.

``step(state, tokens, positions, query)``: append ``tokens`` (B, F) at layout ``positions`` (F,)
to the state (the group decided last step, or a speculative window), and return logits for the
layout positions ``query`` (Q,) given everything fed so far. With F = 0 the first step runs the
condition prefix only.

Continuous outputs (``Capabilities(output="velocity")``, :class:`FlowGenerator`): tokens are float
latents (B, F, C) (the layout's ``channels``); ``step`` commits finished entities and prepares the
context of ``query`` (its ``logits`` are None), and ``velocity(state, x_t, t, query)`` evaluates the
flow of the queried entities at noise level ``t`` without changing the state, as often as the ODE/SDE
solver of the sampler needs. Token buffers follow the layout (``TokenLayout.empty``: int64 codes or
float32 latents), and so do ``SampleResult.tokens`` and code caches.

Protocol 2: rows advance on their own. Positions and queries may be given per row ((B, F), -1 where a
row has fewer), a row can be restarted with a new condition (``restart``: continuous batching), and
what a generator or sampler needs beside its weights it declares in ``binds`` (``"tokenizer"``: VAR's
accumulate step, LANTERN's codebook; ``"target"``: a drafter's generator) and receives through
:func:`bind`; ``argen-train`` and ``argen-sample`` bind from the export's meta.json. Bound objects stay
outside the module's state dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from argen.core.condition import Condition
from argen.core.errors import IncompatibleError
from argen.core.state import DecodeState
from tokenizers_vq.layout import TokenLayout


@dataclass(frozen=True)
class Capabilities:
    """What a generator offers, and (as :data:`Requirements`) what a sampler needs; one dataclass for both.

    output: ``logits`` over a vocabulary, or ``velocity`` of a flow over continuous entities;
    chain: the plan's groups, concatenated, are the chain order (:func:`chain_order`: layout order for
    raster, window after window for Token-Shuffle), one step can feed several positions consecutive in
    that order, and each query's logits depend only on positions earlier in it, so that the product of
    the queried conditionals along the chain is the generator's distribution (what verifying a draft
    window needs); rollback: ``DecodeState.truncate`` is supported; ragged: rows advance independently
    (per-row positions and queries, ``restart`` of single rows: continuous batching); reorder: rows of a
    state can be selected or repeated (``DecodeState.select``: multi-trial samplers); features: the
    generator is a :class:`FeatureTarget` (teacher-forced features one per position, its token embedding
    and head), what an EAGLE drafter reads."""

    output: str = "logits"
    chain: bool = False
    rollback: bool = False
    ragged: bool = False
    reorder: bool = False
    features: bool = False

    def __post_init__(self) -> None:
        if self.output not in ("logits", "velocity"):
            raise ValueError(f"output must be 'logits' or 'velocity', got {self.output!r}")

    def missing(self, required: Capabilities) -> list[str]:
        """What ``required`` asks for that these capabilities lack."""
        out = [f"output={required.output}"] if required.output != self.output else []
        return out + [name for name in ("chain", "rollback", "ragged", "reorder", "features")
                      if getattr(required, name) and not getattr(self, name)]


Requirements = Capabilities  # what a sampler needs is a set of capabilities


def check_compatible(sampler: Any, generator: Any) -> None:
    """Raise :class:`IncompatibleError` naming both and what is missing when ``generator`` cannot serve
    ``sampler`` (instances or classes)."""
    req: Capabilities = sampler.requires
    caps: Capabilities = generator.capabilities
    missing = caps.missing(req)
    if missing:
        def name(x: Any) -> str:
            return x.__name__ if isinstance(x, type) else type(x).__name__
        other = "sampler=flow (continuous entities)" if caps.output == "velocity" else "sampler=ancestral"
        raise IncompatibleError(f"sampler {name(sampler)} needs {', '.join(missing)} but generator "
                                f"{name(generator)} does not provide it (capabilities: {caps}); "
                                f"pick another sampler, e.g. {other}")


def needs(module: Any) -> tuple[str, ...]:
    """What ``module`` (a generator, drafter or sampler) must be bound to before it runs, as it declares
    in ``binds``: ``"tokenizer"`` (VAR's accumulate step, LANTERN's codebook) or ``"target"`` (a drafter's
    generator). Nothing is discovered with ``hasattr``."""
    return tuple(getattr(module, "binds", ()))


def bind(module: Any, **available: Any) -> None:
    """Hand ``module`` each thing it ``needs`` from ``available`` (``tokenizer=``, ``target=``), through its
    ``bind`` method; a need with nothing given is an error naming it."""
    for name in needs(module):
        if available.get(name) is None:
            raise TypeError(f"{type(module).__name__} needs its {name} bound before it runs; pass {name}=... "
                            f"(argen-train and argen-sample take it from the export's meta.json)")
        module.bind(**{name: available[name]})


@dataclass
class LossOutput:
    """loss: scalar to minimise; logs: scalars for the logger (detached)."""

    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class StepOutput:
    """logits: (B, Q, V) for the queried positions (None from a velocity generator, whose outputs come
    from ``velocity``); hidden: (B, Q, C) final features at the slots that produced them (drafters read
    these), or None."""

    logits: Tensor | None
    hidden: Tensor | None = None


@dataclass
class SamplingStats:
    """forward_passes: generator passes (each serves every row in flight); tokens: positions decided,
    summed over samples; wall_seconds; extra["row_passes"]: passes summed over the rows they served
    (per image: row_passes / images); accepted_per_pass: tokens decided per row per pass (1 for
    ancestral raster)."""

    forward_passes: int = 0
    tokens: int = 0
    wall_seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def accepted_per_pass(self) -> float:
        return self.tokens / max(self.extra.get("row_passes", self.forward_passes), 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        d["accepted_per_pass"] = self.accepted_per_pass
        return d


@dataclass
class SampleResult:
    """tokens: in layout order, as the layout stores them: (B, L) int64 codes or (B, L, C) float32 latents."""

    tokens: Tensor
    stats: SamplingStats


@runtime_checkable
class Generator(Protocol):
    """``layout``: what it generates (kind, shapes, vocabulary or channels); ``device`` / ``dtype``: where
    its states are made (samplers read nothing else of the module); ``restart(state, rows, cond)`` for
    ``ragged`` generators; ``binds``/``bind`` when it needs its tokenizer (see :func:`bind`)."""

    capabilities: Capabilities
    layout: TokenLayout

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def loss(self, tokens: Tensor, cond: Condition) -> LossOutput: ...

    def plan(self, length: int | None = None) -> list[Tensor]: ...

    def start(self, cond: Condition, *, max_len: int | None = None) -> DecodeState: ...

    def step(self, state: DecodeState, tokens: Tensor, positions: Tensor, query: Tensor) -> StepOutput: ...

    def null_cond(self, cond: Condition) -> Condition: ...


@runtime_checkable
class FlowGenerator(Generator, Protocol):
    """A generator of continuous entities (``Capabilities(output="velocity")``): ``step`` feeds the
    finished entities (B, F, C) and readies the context of ``query``; ``velocity`` returns the flow
    (B, Q, C) of the queried entities at ``x_t`` (B, Q, C) and noise level ``t`` (B, Q), reading the
    state but never writing it. One convention for every flow generator, so that any solver drives any
    of them (xAR's and FlexTok's rectified flow): t = 1 is noise, t = 0 is data,
    ``x_t = (1 - t) x + t eps`` and the velocity is ``dx_t/dt = eps - x``; a generator trained with
    another convention converts inside ``velocity``."""

    def velocity(self, state: DecodeState, x_t: Tensor, t: Tensor, query: Tensor) -> Tensor: ...


@runtime_checkable
class FeatureTarget(Protocol):
    """What a drafter needs of the generator it serves: teacher-forced features (B, L, C) (feature i
    predicts token i: what ``step`` returns as ``hidden``), its token embedding and its output head, its
    layout, width and head count. Raster generators are feature targets; a drafter names no attribute
    beyond these."""

    layout: Any
    dim: int
    n_head: int
    vocab_size: int

    def features(self, tokens: Tensor, cond: Condition) -> Tensor: ...

    def embed_tokens(self, tokens: Tensor) -> Tensor: ...

    def head(self, features: Tensor) -> Tensor: ...


@runtime_checkable
class Drafter(Protocol):
    """What the speculative loop needs of a drafter (the EAGLE drafter): it is bound to its target
    (``binds = ("target",)``), keeps its own decode state (``start(batch)``), and ``step`` feeds
    (token, target feature) pairs, ``counts[b]`` of them for row b, returning its outputs (B, F, C), whose
    draft logits come from ``head`` (the target's head)."""

    binds: tuple[str, ...]

    @property
    def device(self) -> torch.device: ...

    def bind(self, *, target: Any) -> None: ...

    def to(self, *, device: torch.device, dtype: torch.dtype) -> Any: ...

    def start(self, batch_size: int) -> DecodeState: ...

    def step(self, state: DecodeState, tokens: Tensor, features: Tensor, counts: Tensor | None = None) -> Tensor: ...

    def head(self, features: Tensor) -> Tensor: ...


@runtime_checkable
class Sampler(Protocol):
    """``sample`` draws one sample per condition row from its seed; at most ``batch_size`` rows share a
    forward pass; ``on_finish(indices, tokens)`` hears of samples as they complete."""

    requires: Requirements

    def sample(self, generator: Generator, cond: Condition, *, seeds: Tensor, batch_size: int | None = None,
               on_finish: Any = None) -> SampleResult: ...


def chain_order(plan: list[Tensor]) -> Tensor:
    """(L,) int64: the layout position at each index of the chain, the plan's groups concatenated (a
    ``chain`` generator's order: speculative samplers draft and verify along it)."""
    return torch.cat([torch.as_tensor(g, dtype=torch.long).reshape(-1).cpu() for g in plan])


def as_positions(x: Tensor | list[int] | range, device: torch.device | str = "cpu") -> Tensor:
    return torch.as_tensor(list(x) if isinstance(x, range) else x, dtype=torch.long, device=device)
