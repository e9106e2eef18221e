"""The generator fixtures of the contract suite: one tiny, randomly initialised but non-trivial instance of
every generator family, and a vocabulary-3 "toy" of the same family small enough to enumerate every
sequence. A new generator joins the suite by adding one :class:`Case` to ``CASES``.

The drafter fixtures: an EAGLE drafter (:class:`~argen.generators.drafter.EagleDrafter`) for every case
whose generator can serve one (a :class:`~argen.core.protocols.FeatureTarget`), in ``DRAFTERS``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate

from argen.core import Condition
from argen.core.protocols import FeatureTarget, bind
from tokenizers_vq.msvq import MultiScaleQuantizer


@dataclass(frozen=True)
class Case:
    """name; config(vocab): the generator's Hydra node; bind(generator, vocab): what it needs beside its
    weights (VAR's tokenizer step); toy_vocab: the vocabulary of the enumerable toy."""

    name: str
    config: Callable[[int], dict[str, Any]]
    bind: Callable[[Any, int], None] = lambda g, vocab: None
    labels: int = 3

    def build(self, vocab: int = 16, seed: int = 0, head_std: float = 0.5) -> Any:
        torch.manual_seed(seed)
        g = instantiate(self.config(vocab), _convert_="all")
        with torch.no_grad():  # the released inits zero (raster) or shrink (VAR) the heads: make p non-trivial
            for name in ("output", "medusa_output", "head"):  # medusa_output: NAR's second head
                if isinstance(getattr(g, name, None), torch.nn.Linear):
                    getattr(g, name).weight.normal_(0, head_std)
        self.bind(g, vocab)
        return g.eval()

    def cond(self, n: int) -> Condition:
        return Condition(labels=torch.arange(n) % self.labels)


def _class_condition() -> dict[str, Any]:
    return {"_target_": "argen.nn.conditioning.ClassEmbedder", "_partial_": True, "num_classes": 3}


def raster(vocab: int, *, grid: int | None, length: int | None) -> dict[str, Any]:
    return {"_target_": "argen.generators.raster.RasterGenerator", "vocab_size": vocab, "dim": 32, "n_layer": 2,
            "n_head": 2, "multiple_of": 16, "grid_size": grid, "sequence_length": length,
            "condition": _class_condition()}


def flextok(vocab: int) -> dict[str, Any]:
    """AR over a FlexTok-style 1D sequence, stopped after k tokens (:class:`~argen.generators.prefix.PrefixGenerator`
    over the raster generator's 1D mode): k = 3 of 4 in the toy (3^3 sequences), 7 of 12 otherwise."""
    return {"_target_": "argen.generators.prefix.PrefixGenerator",
            "generator": raster(vocab, grid=None, length=4 if vocab <= 3 else 12), "length": 3 if vocab <= 3 else 7}


def _heads_of_inner(g: Any, vocab: int) -> None:  # build() perturbs g.output; the view's head is its inner's
    torch.manual_seed(2)
    with torch.no_grad():
        g.inner.output.weight.normal_(0, 0.5)


def nar(vocab: int) -> dict[str, Any]:
    return {"_target_": "argen.generators.nar.NARGenerator", "vocab_size": vocab, "dim": 32, "n_layer": 2,
            "n_head": 2, "multiple_of": 16, "grid_size": 2 if vocab <= 3 else 4, "condition": _class_condition()}


def token_shuffle(vocab: int) -> dict[str, Any]:
    """2x2 windows: of a 2x4 grid in the toy (two windows, 3^8 sequences), of a 4x4 grid otherwise."""
    return {"_target_": "argen.generators.token_shuffle.TokenShuffleGenerator", "vocab_size": vocab, "dim": 32,
            "n_layer": 2, "n_head": 2, "multiple_of": 16, "grid_size": [2, 4] if vocab <= 3 else 4, "window": 2,
            "shuffle_blocks": 1, "condition": _class_condition()}


def var(vocab: int) -> dict[str, Any]:
    scales = [1, 2] if vocab <= 3 else [1, 2, 3]
    return {"_target_": "argen.generators.var.VARGenerator", "vocab_size": vocab, "scales": scales, "input_dim": 4,
            "depth": 2, "width": 32, "n_head": 2, "init_adaln_gamma": 0.5, "condition": _class_condition()}


def bind_var(g: Any, vocab: int) -> None:
    torch.manual_seed(1)
    q = MultiScaleQuantizer(codebook_size=vocab, embed_dim=4, scales=list(g.scales), num_phi=2)
    with torch.no_grad():
        q.embedding.weight.normal_()
    g.attach_tokenizer(q)


CASES: list[Case] = [
    # the toys: a 2x2 grid and 4 1D positions (3^4 sequences); VAR at scales 1, 2 (3^5); NAR below
    Case("raster_grid", lambda v: raster(v, grid=2 if v <= 3 else 4, length=None)),
    Case("raster_1d", lambda v: raster(v, grid=None, length=4 if v <= 3 else 12)),
    Case("var", var, bind=bind_var),
    Case("nar", nar),  # the toy: a 2x2 grid in 3 anti-diagonals (3^4 sequences)
    Case("token_shuffle", token_shuffle),
    Case("flextok", flextok, bind=_heads_of_inner),
]
TOY_VOCAB = 3


def case(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


def make(name: str, **kw: Any) -> Any:
    return case(name).build(**kw)



def drafter_config(g: Any) -> dict[str, Any]:
    """The Hydra node of an EAGLE drafter for the raster generator ``g`` (its sizes, as argen-train fills
    them in from ``target_path``)."""
    grid = g.layout.kind == "grid"
    return {"_target_": "argen.generators.drafter.EagleDrafter", "vocab_size": g.vocab_size, "dim": g.dim,
            "n_head": g.n_head, "grid_size": g.layout.shapes[0][0] if grid else None,
            "sequence_length": None if grid else g.layout.length, "multiple_of": 16}


def drafter_for(g: Any, seed: int = 0, std: float = 0.1) -> Any:
    """A random drafter bound to ``g``, whose proposals are far from uniform and far from the target's."""
    torch.manual_seed(seed)
    d = instantiate(drafter_config(g), _convert_="all")
    with torch.no_grad():
        for p in d.parameters():
            if p.dim() == 2:
                p.normal_(0, std)
    bind(d, target=g)
    return d.eval()


@dataclass(frozen=True)
class DrafterCase:
    """An EAGLE drafter serving the generator of ``target``; build: (target generator, drafter bound to it)."""

    target: Case

    @property
    def name(self) -> str:
        return f"eagle-{self.target.name}"

    def build(self, seed: int = 0) -> tuple[Any, Any]:
        g = self.target.build(seed=seed)
        return g, drafter_for(g, seed=seed)

    def cond(self, n: int) -> Condition:
        return self.target.cond(n)


DRAFTERS: list[DrafterCase] = [DrafterCase(c) for c in CASES if isinstance(c.build(vocab=TOY_VOCAB), FeatureTarget)]
