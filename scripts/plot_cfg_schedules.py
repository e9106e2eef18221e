"""Plot the CFG schedules (argen.samplers.guidance) over the AR token index of a Token-Shuffle plan.

    python scripts/plot_cfg_schedules.py --out docs/figures/cfg_schedules.png [--scale 3] [--grid 16] [--window 2]

The scale each token is sampled with comes from the generator's own plan (DecodingPolicy: progress = plan
step / (steps - 1)); for Token-Shuffle a plan step is a window of s^2 tokens, so the curve is a staircase
over the token index (a line over the window index). Written next to the PNG: a JSON of the curves.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import torch

from argen.generators.token_shuffle import TokenShuffleGenerator
from argen.nn.conditioning import ClassEmbedder
from argen.samplers.guidance import SCHEDULES, Guidance
from argen.samplers.policy import plan_progress


def curves(scale: float, grid: int, window: int) -> dict[str, list[float]]:
    """Guidance scale per token, in the order the tokens are generated (the chain), for every schedule."""
    g = TokenShuffleGenerator(vocab_size=16, dim=32, n_layer=1, n_head=2, multiple_of=16, grid_size=grid,
                              window=window, condition=partial(ClassEmbedder, num_classes=2))
    plan = g.plan()
    progress = plan_progress(plan, g.layout.length)[torch.cat(plan)]  # in generation order
    return {name: Guidance(scale=scale, schedule=name).scale_at(progress).tolist() for name in SCHEDULES}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the PNG to write (a .json of the curves beside it)")
    p.add_argument("--scale", type=float, default=3.0, help="target guidance scale s")
    p.add_argument("--grid", type=int, default=16, help="token grid side (16: 64 px shapes at f = 4)")
    p.add_argument("--window", type=int, default=2, help="Token-Shuffle window s")
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves(args.scale, args.grid, args.window)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, ys in data.items():
        ax.step(range(len(ys)), ys, where="post", label=name)
    ax.set(xlabel=f"token index (generation order; {args.window}x{args.window} windows of a {args.grid}x{args.grid} "
                  f"grid)", ylabel="guidance scale", title=f"CFG schedules to scale {args.scale:g}")
    ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    args.out.with_suffix(".json").write_text(json.dumps({"scale": args.scale, "grid": args.grid,
                                                         "window": args.window, "curves": data}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
