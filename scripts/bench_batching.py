"""Does batched speculative decoding pay? Passes per image and images/s of ancestral sampling and the
speculative loop (SJD at several windows; the EAGLE drafter when one is given) at several batch sizes,
on one trained shapes generator, through the library pipeline (argen-sample's own path, minus disk).

With per-row advance and continuous batching every sample takes the passes it would take alone, so
``row_passes_per_image`` at batch 8 equals batch 1's (a batch that waited for its slowest row took
1.6x as many); what batching changes is how many rows share a pass, i.e. images/s. A profile of the
largest batch's best window (``--profile``) says where that time goes.

    python scripts/bench_batching.py --generator outputs/quickstart/runs/shapes_raster/export --out outputs/bench_batching
Writes ``batching.json`` (one record per sampler x batch, with the machine and the seeds) and
``batching.png`` (passes per image and images/s against batch size).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from argen.data.shapes import ShapesWorld, make_prompt_suite  # noqa: E402
from argen.pipeline import Pipeline  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", required=True, help="exported shapes generator")
    p.add_argument("--drafter", default=None, help="exported drafter for that generator (adds sampler=speculative)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batches", default="1,8", help="comma list of batch sizes")
    p.add_argument("--windows", default="9,17", help="SJD windows (positions a pass may decide)")
    p.add_argument("--prompts", type=int, default=5, help="suite prompts per task (6 tasks), 1 image each")
    p.add_argument("--cfg-scale", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="cProfile the largest batch of the best SJD window")
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = [("ancestral", {})]
    out += [("sjd", {"window": int(w)}) for w in args.windows.split(",")]
    if args.drafter:
        out.append(("speculative", {"drafter": args.drafter, "draft_len": 4}))
    return out


def measure(pipe: Pipeline, prompts: list[str], batch: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = pipe(prompts, n=1, seed=0, batch_size=batch)
    wall = time.perf_counter() - t0
    s = result.stats
    return {"images": len(prompts), "row_passes_per_image": s.forward_passes_per_image,
            "passes": s.sampling.forward_passes, "accepted_per_pass": s.sampling.accepted_per_pass,
            "sampler_seconds": s.sampler_seconds, "sampler_images_per_s": len(prompts) / s.sampler_seconds,
            "end_to_end_images_per_s": len(prompts) / wall, "tokens": result.images.shape}


# where a speculative sampler's time goes: (label, file suffix, function) whose cumulative time is that part
PARTS = (("target passes (generator.step)", "generators/raster.py", "step"),
         ("drafting (draft source)", "samplers/drafts.py", "propose"),
         ("verification", "samplers/verify.py", "__call__"),
         ("decoding finished images (pipeline, not sampler time)", "argen/pipeline.py", "finished"),
         ("new rows (generator.restart)", "generators/raster.py", "restart"),
         ("compacting the batch", "samplers/batch.py", "compact"))


def breakdown(stats: pstats.Stats) -> dict[str, Any]:
    """Seconds and shares of the sampling call by part (PARTS); the rest is the loop's own bookkeeping."""
    table = stats.stats  # type: ignore[attr-defined]
    total = max(ct for (_, _, name), (_, _, _, ct, _) in table.items() if name == "stream")
    parts = {label: sum(ct for (file, _, name), (_, _, _, ct, _) in table.items()
                        if file.endswith(suffix) and name == func) for label, suffix, func in PARTS}
    parts["loop bookkeeping (the rest)"] = total - sum(parts.values())
    return {"seconds": total, "parts": {k: {"seconds": v, "share": v / total} for k, v in parts.items()}}


def profile(pipe: Pipeline, prompts: list[str], batch: int, top: int = 14) -> dict[str, Any]:
    prof = cProfile.Profile()
    prof.enable()
    pipe(prompts, n=1, seed=0, batch_size=batch)
    prof.disable()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("cumulative").print_stats(top)
    return {"breakdown": breakdown(stats), "cprofile": text.getvalue()}


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r["setting"] for r in records):
        rows = [r for r in records if r["setting"] == name]
        b = [r["batch"] for r in rows]
        axes[0].plot(b, [r["row_passes_per_image"] for r in rows], marker="o", label=name)
        axes[1].plot(b, [r["sampler_images_per_s"] for r in rows], marker="o", label=name)
    axes[0].set(xlabel="batch size", ylabel="forward passes per image (row passes)", xscale="log")
    axes[1].set(xlabel="batch size", ylabel="images / s (sampler)", xscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    prompts = [r["prompt"] for r in make_prompt_suite(ShapesWorld(), n_per_tag=args.prompts, seed=0)]
    base = Pipeline.from_export(args.generator)
    records = []
    for name, options in settings(args):
        pipe = base.with_sampler(name, cfg_scale=args.cfg_scale, **options)
        pipe(prompts[:2], n=1, seed=0, batch_size=2)  # warm up
        for batch in (int(b) for b in args.batches.split(",")):
            rec = {"setting": name + "".join(f"[{k}={v}]" for k, v in options.items() if k != "drafter"),
                   "sampler": name, "batch": batch, **options, **measure(pipe, prompts, batch)}
            records.append(rec)
            print(json.dumps({k: v for k, v in rec.items() if k != "tokens"}), flush=True)  # noqa: T201
    out: dict[str, Any] = {"generator": args.generator, "prompts": len(prompts), "cfg_scale": args.cfg_scale,
                           "threads": args.threads, "machine": {"cpu": platform.processor() or platform.machine(),
                                                                "cpu_count": os.cpu_count(), "torch": torch.__version__},
                           "runs": [{k: v for k, v in r.items() if k != "tokens"} for r in records]}
    if args.profile:
        sjd = [r for r in records if r["sampler"] == "sjd" and r["batch"] == max(x["batch"] for x in records)]
        best = max(sjd, key=lambda r: r["sampler_images_per_s"])
        out["profile"] = {"setting": best["setting"], "batch": best["batch"],
                          **profile(base.with_sampler("sjd", cfg_scale=args.cfg_scale, window=best["window"]),
                                    prompts, best["batch"])}
        print(json.dumps(out["profile"]["breakdown"], indent=1), flush=True)  # noqa: T201
    (args.out / "batching.json").write_text(json.dumps(out, indent=2, default=str))
    plot(records, args.out / "batching.png")


if __name__ == "__main__":
    main()
