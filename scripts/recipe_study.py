"""One row of the generator recipe table: train a shapes generator with ``argen-train`` overrides, sample
the ShapesEval suite with ``argen-sample`` and record steps, CPU minutes, ShapesEval (95% CI, per task)
and, optionally, fd_shapes. Rows accumulate in ``<out>/table.json`` (keyed by ``--name``; a finished run
is not retrained) and ``<out>/table.png`` plots ShapesEval against CPU minutes.

    python scripts/recipe_study.py --out outputs/recipe --name base --threads 1 \\
        --tokenizer outputs/quickstart/runs/shapes_vq/export --codes outputs/quickstart/codes/shapes \\
        -- generator=raster_nano trainer.max_steps=500 data.global_batch_size=32
    python scripts/recipe_study.py --out outputs/probe --codes outputs/quickstart/codes/shapes \\
        --probe outputs/quickstart/runs/shapes_raster/export     # does it read colour / shape words?

CPU minutes are the training wall time x the torch threads it ran with, so runs on a shared machine read
high: compare rows measured under the same load (the table records the load average at the start).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _overrides  # noqa: E402


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv, overrides = _overrides.split(argv)
    p = _overrides.parser(__doc__)
    p.add_argument("--name", help="row name (the run folder under <out>/runs)")
    p.add_argument("--tokenizer", help="exported shapes tokenizer")
    p.add_argument("--codes", required=True, help="code cache of that tokenizer")
    p.add_argument("--experiment", default="shapes_raster")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cfg-scale", default="2.0", help="comma list: one ShapesEval per scale ('': val loss only)")
    p.add_argument("--cfg-schedules", default="constant",
                   help="comma list of CFG schedules (constant, linear, cosine, half_linear): one ShapesEval per "
                        "scale and schedule")
    p.add_argument("--suite-per-tag", type=int, default=20)
    p.add_argument("--n-per-prompt", type=int, default=4)
    p.add_argument("--fill", action="store_true",
                   help="fill every task to --suite-per-tag prompts (the quick start's suite; 120 prompts)")
    p.add_argument("--fd-samples", type=int, default=0, help="fd_shapes samples (0: skip)")
    p.add_argument("--feature-net", default=None, help="shapes feature network export (for fd_shapes)")
    p.add_argument("--note", default="", help="what this row changes")
    p.add_argument("--probe", metavar="EXPORT", default=None,
                   help="only the caption probe of this exported generator on --codes (writes <out>/probe.json)")
    args = p.parse_args(argv)
    if args.probe is None and not (args.name and args.tokenizer):
        p.error("--name and --tokenizer are required (unless --probe EXPORT)")
    return args, overrides


def train(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    from argen.cli.common import compose_config
    from argen.cli.train import run as train_run

    ov = [f"experiment={args.experiment}", f"paths.output_root={args.out}", f"name={args.name}",
          f"tokenizer_path={args.tokenizer}", f"codes_dir={args.codes}", "resume=auto", "logger=none",
          "trainer.val_check_interval=100000", "callbacks.checkpoint.every_n_train_steps=250", *overrides]
    cfg = compose_config("train", ov)
    t0 = time.perf_counter()
    result = train_run(cfg)
    seconds = time.perf_counter() - t0
    return {"export": result["export_dir"], "train_seconds": seconds, "steps": int(cfg.trainer.max_steps),
            "batch": int(cfg.data.global_batch_size)}


@torch.no_grad()
def val_loss(export: str, codes: str, batch: int = 128, *, tag: str | None = None,
             caption: Callable[[str], str] | None = None) -> float:
    """Mean next-token cross-entropy (nats) of the exported generator on the cache's val split, conditioned
    on its captions: a precise, monotone screen where ShapesEval is still noise. ``tag``: only the scenes of
    that GenEval task; ``caption``: rewrite each caption first (the caption probe)."""
    from argen.core import Condition
    from argen.data.codes import CodeDataset
    from argen.io.export import load

    gen = load(export).eval()
    data = CodeDataset(root=codes, split="val")
    rows = [data[i] for i in range(len(data))]
    if tag is not None:
        rows = [r for r in rows if r["metadata"] and json.loads(r["metadata"]).get("tag") == tag]
    if not rows:
        raise ValueError(f"the val split of {codes} has no scenes of task {tag!r}")
    total = 0.0
    for start in range(0, len(rows), batch):
        part = rows[start:start + batch]
        texts = [caption(r["caption"]) if caption else r["caption"] for r in part]
        cond = Condition(texts=texts, labels=torch.stack([r["label"] for r in part]))
        total += float(gen.loss(torch.stack([r["tokens"] for r in part]), cond).loss) * len(part)
    return total / len(rows)


def swap_word(caption: str, pool: Sequence[str]) -> str:
    """``caption`` with its first word from ``pool`` replaced by the next one of ``pool`` (cyclically)."""
    words = caption.split()
    i = next(k for k, w in enumerate(words) if w in pool)
    words[i] = pool[(list(pool).index(words[i]) + 1) % len(pool)]
    return " ".join(words)


def caption_probe(export: str, codes: str) -> dict[str, float]:
    """Does the generator read the caption's colour and shape words? The val loss of the single-object
    colour scenes ("a photo of a red circle") with the true caption, with its colour word swapped and with
    its shape word swapped: the increase is what the word is worth to the model, in nats/token."""
    from argen.data.shapes import DEFAULT_COLORS, DEFAULT_SHAPES

    true = val_loss(export, codes, tag="colors")
    return {"true": true,
            "colour_swapped": val_loss(export, codes, tag="colors", caption=lambda c: swap_word(c, DEFAULT_COLORS)) - true,
            "shape_swapped": val_loss(export, codes, tag="colors", caption=lambda c: swap_word(c, DEFAULT_SHAPES)) - true}


def evaluate(args: argparse.Namespace, export: str, cfg_scale: float, schedule: str = "constant") -> dict[str, Any]:
    from argen.cli.common import compose_config
    from argen.cli.sample import run as sample_run
    from argen.training.prepare import export_config

    tag = "" if schedule == "constant" else f"_{schedule}"
    folder = args.out / "samples" / f"{args.name}_cfg{cfg_scale:g}{tag}"
    common = [f"generator_path={export}", "overwrite=true", "seed=0", f"sampler.cfg_scale={cfg_scale}",
              f"sampler.cfg_schedule={schedule}"]
    suite = sample_run(compose_config("sample", [*common, "suite=shapes", f"suite_per_tag={args.suite_per_tag}",
                                                 f"n_per_condition={args.n_per_prompt}", f"output_dir={folder}",
                                                 f"suite_fill={str(args.fill).lower()}", "eval=shapes"]))
    ev = suite["evaluation"]
    row: dict[str, Any] = {"cfg_scale": cfg_scale, "cfg_schedule": schedule, "shapes_overall": ev["overall"], "ci95": [ev.get("ci_low"),
                                                                                           ev.get("ci_high")],
                           "tasks": ev.get("task_scores"), "task_ci95": ev.get("task_ci"), "n_images": ev.get("n_images"), "grid": suite["files"]["grid"]}
    if args.fd_samples:
        from argen.data.shapes import ShapesDataset

        size = int(export_config(args.tokenizer).get("image_size", 32))  # the tokenizer's images (32, 64, 128 px)
        test = ShapesDataset(split="test", size=args.fd_samples, image_size=size, seed=0)
        prompts = args.out / "samples" / "test_captions.txt"
        prompts.write_text("\n".join(test[i]["caption"] for i in range(args.fd_samples)) + "\n")
        fd = sample_run(compose_config("sample", [*common, f"prompt_file={prompts}", "n_per_condition=1",
                                                  f"output_dir={folder}_fd", "eval=fd_shapes",
                                                  f"eval.extractor.path={args.feature_net}",
                                                  f"eval.reference.image_size={size}",
                                                  f"eval.floor_reference.image_size={size}"]))
        row["fd_shapes"] = fd["evaluation"]["fd"]
        row["fd_floor"] = (fd["evaluation"].get("floor") or {}).get("fd")
    return row


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in (r for r in rows if r["evals"]):
        best = max(r["evals"], key=lambda e: e["shapes_overall"])
        lo, hi = best["ci95"]
        y = best["shapes_overall"]
        ax.errorbar(r["cpu_minutes"], y, yerr=[[y - (lo or y)], [(hi or y) - y]], fmt="o", capsize=3)
        ax.annotate(r["name"], (r["cpu_minutes"], y), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set(xlabel="training CPU minutes (wall x threads)", ylabel="ShapesEval overall (best CFG, 95% CI)",
           ylim=(0, 1))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    args, overrides = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.probe is not None:
        probe = {"export": args.probe, "codes": args.codes, **caption_probe(args.probe, args.codes)}
        (args.out / "probe.json").write_text(json.dumps(probe, indent=2))
        print(json.dumps(probe))  # noqa: T201
        return
    table = args.out / "table.json"
    rows = json.loads(table.read_text()) if table.is_file() else []
    load = os.getloadavg()[0]
    trained = train(args, overrides)
    row = {"name": args.name, "note": args.note, "overrides": overrides, "threads": args.threads,
           "load_at_start": load, **trained, "cpu_minutes": trained["train_seconds"] * args.threads / 60,
           "val_loss": val_loss(trained["export"], args.codes),
           "caption_probe": caption_probe(trained["export"], args.codes),
           "evals": [evaluate(args, trained["export"], float(s), schedule) for s in args.cfg_scale.split(",") if s
                     for schedule in args.cfg_schedules.split(",")]}
    rows = json.loads(table.read_text()) if table.is_file() else []  # again: a parallel row may have landed
    old = next((r for r in rows if r["name"] == args.name), None)
    if old is not None and old.get("train_seconds", 0) > row["train_seconds"] * 5:  # resumed: keep the real time
        row.update(train_seconds=old["train_seconds"], cpu_minutes=old["cpu_minutes"], load_at_start=old["load_at_start"])
    rows = [r for r in rows if r["name"] != args.name] + [row]
    tmp = table.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=2))
    tmp.replace(table)
    plot(rows, args.out / "table.png")
    print(f"{args.name}: val loss {row['val_loss']:.4f} nats/token | {row['cpu_minutes']:.1f} CPU min")  # noqa: T201
    for e in row["evals"]:
        print(f"{args.name} cfg {e['cfg_scale']} {e['cfg_schedule']}: ShapesEval {e['shapes_overall']:.3f} {e['ci95']} "  # noqa: T201
              f"{ {k: round(v, 2) for k, v in (e['tasks'] or {}).items()} } | fd_shapes {e.get('fd_shapes')} (floor "
              f"{e.get('fd_floor')}) | {row['cpu_minutes']:.1f} CPU min")


if __name__ == "__main__":
    main()
