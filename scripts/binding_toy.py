"""How fast does a conditioning path learn a word -> token binding? A toy that isolates issue 14's question.

Every image is an 8x8 token grid of background (code 0) with one 2x2 object at a random place; the object's
four codes are ``1 + 8 * colour + 4 * shape + part``, and the caption is "a {colour} {shape}" (6 colours,
2 shapes), so only the object's first token needs the caption (the other three copy it): the same sparsity
as the shapes world's patch-local codes. The probe is the cross-entropy of that first token with the true
caption and with its colour or shape word swapped; once the words are read, the true caption's loss falls to
about log(49) = 3.9 nats (only the place is unknown) and the swapped ones rise far above it.

Variants: ``trained`` (the WordTextEncoder trained jointly, the previous default), ``frozen`` (the encoder
at its random init, ``generator.condition.encoder.frozen=true``), ``lr01`` (the encoder at 0.1x the lr),
``layers0`` (no encoder layers), ``class`` (the 12 (colour, shape) pairs as class ids: the reference),
``trained_readout`` / ``frozen_readout`` (those encoders with ``generator.condition_readout=1``: every
position's final features also predict the caption's bag of words).
Each runs a raster_nano-sized GPT (dim 128, 4 layers) with the quick start's recipe (AdamW lr 3e-3, 50
warmup steps, batch 32, no dropout).

    python scripts/binding_toy.py --out outputs/binding_toy --variants trained,frozen,class --steps 1000
    python scripts/binding_toy.py --out outputs/binding_toy --variants frozen_readout,trained_readout --steps 500 --every 100

Writes ``<out>/binding_toy.json`` (probe per variant and step) and ``<out>/binding_toy.png``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from argen.core.condition import Condition
from argen.generators.raster import RasterGenerator
from argen.nn.conditioning import ClassEmbedder, TextConditioner
from argen.nn.text import WordTextEncoder

COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
SHAPES = ("square", "circle")
VARIANTS = ("trained", "frozen", "lr01", "layers0", "class", "trained_readout", "frozen_readout")


def scenes(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """tokens (n, 64), colour (n,), shape (n,), first object position (n,), captions."""
    colour = torch.randint(len(COLOURS), (n,), generator=gen)
    shape = torch.randint(len(SHAPES), (n,), generator=gen)
    r0, c0 = torch.randint(7, (n,), generator=gen), torch.randint(7, (n,), generator=gen)
    grid = torch.zeros(n, 8, 8, dtype=torch.long)
    rows = torch.arange(n)
    for part, (dr, dc) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        grid[rows, r0 + dr, c0 + dc] = 1 + 8 * colour + 4 * shape + part
    captions = [f"a {COLOURS[c]} {SHAPES[s]}" for c, s in zip(colour.tolist(), shape.tolist())]
    return grid.view(n, 64), colour, shape, r0 * 8 + c0, captions


def build(variant: str, seed: int) -> tuple[RasterGenerator, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    if variant == "class":
        condition = functools.partial(ClassEmbedder, num_classes=len(COLOURS) * len(SHAPES), dropout=0.1)
    else:
        enc = WordTextEncoder(vocab=sorted({"a", *COLOURS, *SHAPES}), max_length=16, dim=128,
                              n_layer=0 if variant == "layers0" else 2, n_head=4, frozen=variant.startswith("frozen"))
        condition = functools.partial(TextConditioner, encoder=enc, dropout=0.1)
    model = RasterGenerator(vocab_size=64, dim=128, n_layer=4, n_head=4, multiple_of=32, grid_size=8,
                            condition=condition, token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0,
                            condition_readout=1.0 if variant.endswith("_readout") else 0.0)
    encoder = getattr(model.cls_embedding, "encoder", None)
    enc_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in enc_ids]}]
    enc_params = [p for p in model.parameters() if p.requires_grad and id(p) in enc_ids]
    if enc_params:
        groups.append({"params": enc_params, "lr": 3e-4 if variant == "lr01" else 3e-3})
    return model, torch.optim.AdamW(groups, lr=3e-3, weight_decay=0.05, betas=(0.9, 0.95))


def condition(variant: str, colour: torch.Tensor, shape: torch.Tensor) -> Condition:
    if variant == "class":
        return Condition(labels=colour * len(SHAPES) + shape)
    return Condition(texts=[f"a {COLOURS[c]} {SHAPES[s]}" for c, s in zip(colour.tolist(), shape.tolist())])


@torch.no_grad()
def probe(model: RasterGenerator, variant: str, n: int = 512) -> dict[str, float]:
    """First-object-token cross-entropy (nats) with the true condition, its colour swapped, its shape swapped."""
    model.eval()
    tokens, colour, shape, first, _ = scenes(n, torch.Generator().manual_seed(12345))
    out = {}
    for name, (c, s) in {"true": (colour, shape), "colour_swapped": ((colour + 1) % len(COLOURS), shape),
                         "shape_swapped": (colour, 1 - shape)}.items():
        ce = F.cross_entropy(model.logits(tokens, condition(variant, c, s)).transpose(1, 2), tokens, reduction="none")
        out[name] = float(ce[torch.arange(n), first].mean())
    model.train()
    return out


def run(variant: str, steps: int, every: int, seed: int) -> list[dict[str, float]]:
    model, opt = build(variant, seed)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    data = torch.Generator().manual_seed(seed)
    trace, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        tokens, colour, shape, _, _ = scenes(32, data)
        loss = model.loss(tokens, condition(variant, colour, shape)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % every == 0 or step == steps:
            row = {"step": step, "loss": float(loss), "seconds": time.perf_counter() - t0, **probe(model, variant)}
            trace.append(row)
            print(f"{variant:8s} step {step:5d} loss {row['loss']:.3f} first-token CE true {row['true']:.2f} "
                  f"colour-swapped {row['colour_swapped']:.2f} shape-swapped {row['shape_swapped']:.2f}", flush=True)
    return trace


def plot(results: dict[str, list[dict[str, float]]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (variant, trace) in enumerate(results.items()):
        steps = [r["step"] for r in trace]
        line, = ax.plot(steps, [r["true"] for r in trace], "-o", ms=3, label=f"{variant}: true caption")
        ax.plot(steps, [r["colour_swapped"] for r in trace], "--", color=line.get_color(), alpha=0.6,
                label=f"{variant}: colour swapped")
    ax.axhline(math.log(49), color="grey", lw=0.8, ls=":", label="log 49 (words fully read)")
    ax.set(xlabel="training step (batch 32)", ylabel="first object token CE (nats)",
           title="Does the condition reach the object's first token?")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/binding_toy"))
    p.add_argument("--variants", default="trained,frozen,class", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=250, help="probe every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "binding_toy.json"
    results = json.loads(path.read_text())["variants"] if path.is_file() else {}
    for variant in variants:
        trace = run(variant, args.steps, args.every, args.seed)
        results = json.loads(path.read_text())["variants"] if path.is_file() else {}  # a parallel run may have written
        results[variant] = trace
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"steps": args.steps, "seed": args.seed, "threads": args.threads,
                                   "variants": results}, indent=2))
        tmp.replace(path)
    plot(results, args.out / "binding_toy.png")
    print(f"wrote {path} and {args.out / 'binding_toy.png'}")


if __name__ == "__main__":
    main()
