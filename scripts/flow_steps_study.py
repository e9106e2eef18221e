"""Flow steps vs quality for a trained xAR (or any velocity) generator on the shapes world: for each number of
flow steps per entity, ShapesEval of the prompt suite (95% intervals) and fd_shapes of held-out test captions,
with the sampling speed, at one CFG scale; the SDE (the paper's sampler) and, with ``--ode``, the Euler ODE.

    python scripts/flow_steps_study.py --generator outputs/runs/shapes_xar/export \\
        --feature-net outputs/paradigms/feature_nets/shapes --out outputs/flow_steps --steps 4 8 16 25 50

Writes ``flow_steps.json`` (one record per method and step count, rewritten after each, so a killed run
keeps what it measured and a rerun skips what is there) and ``flow_steps.png``. The feature net is the
shapes network of a quick start or paradigm study (``argen.eval.feature_nets``); without one it is trained
into ``--out/feature_nets/shapes`` first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from argen.cli.quickstart import sampling_stage  # noqa: E402
from argen.io.folders import atomic_write_json  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", type=Path, required=True, help="exported flow generator (xAR)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--feature-net", type=Path, default=None, help="shapes feature network export")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 25, 50], help="flow steps per entity")
    p.add_argument("--ode", action="store_true", help="also the Euler ODE at every step count")
    p.add_argument("--cfg-scale", type=float, default=3.0)
    p.add_argument("--suite-per-tag", type=int, default=20)
    p.add_argument("--fd-samples", type=int, default=1000)
    p.add_argument("--replot", action="store_true", help="only redraw flow_steps.png from flow_steps.json")
    return p.parse_args(argv)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.6))
    for k, method in enumerate(sorted({r["method"] for r in report["runs"]})):
        rows = sorted((r for r in report["runs"] if r["method"] == method), key=lambda r: r["steps"])
        xs = [r["steps"] for r in rows]
        ys = [r["shapes"]["overall"] for r in rows]
        err = [[y - r["shapes"]["ci95"][0] for y, r in zip(ys, rows)], [r["shapes"]["ci95"][1] - y for y, r in zip(ys, rows)]]
        left.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=f"C{k}", label=method)
        middle.plot(xs, [r["fd_shapes"]["fd"] for r in rows], marker="o", color=f"C{k}", label=method)
        right.plot(xs, [r["sampling"]["sampler_images_per_s"] for r in rows], marker="o", color=f"C{k}", label=method)
    floor = next((r["fd_shapes"]["floor"].get("fd") for r in report["runs"] if r["fd_shapes"].get("floor")), None)
    if floor:
        middle.axhline(floor, color="grey", ls="--", lw=0.8, label=f"floor {floor:.2f}")
    for ax, label in ((left, "ShapesEval (95% CI)"), (middle, "fd_shapes"), (right, "images / s (sampler)")):
        ax.set(xscale="log", xlabel="flow steps per entity", ylabel=label)
        ax.set_xticks(sorted({r["steps"] for r in report["runs"]}), [str(s) for s in sorted({r["steps"] for r in report["runs"]})])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{report['generator']}: flow steps vs quality, CFG {report['cfg_scale']} (linear ramp)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse(argv)
    path = args.out / "flow_steps.json"
    if args.replot:
        report = json.loads(path.read_text())
        plot(report, args.out / "flow_steps.png")
        return report
    if not (args.generator / "meta.json").is_file():
        raise SystemExit(f"{args.generator} is not a generator export (no meta.json): pass --generator "
                         "<run>/export of a trained xAR, e.g. outputs/runs/shapes_xar/export")
    args.out.mkdir(parents=True, exist_ok=True)
    net = args.feature_net or args.out / "feature_nets" / "shapes"
    if not (net / "model.safetensors").is_file():
        from argen.eval.feature_nets import build_and_export

        build_and_export("shapes", net, overwrite=True)
    report: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    if report.get("generator") not in (None, str(args.generator)) or report.get("cfg_scale") not in (None, args.cfg_scale):
        report = {}  # another generator or scale: start over
    report.update(generator=str(args.generator), cfg_scale=args.cfg_scale, suite_per_tag=args.suite_per_tag,
                  fd_samples=args.fd_samples)
    runs: list[dict[str, Any]] = report.setdefault("runs", [])
    for method in ["sde", *(["ode"] if args.ode else [])]:
        for steps in args.steps:
            if any(r["method"] == method and r["steps"] == steps for r in runs):
                continue
            start = time.perf_counter()
            row = sampling_stage(args.out / f"{method}{steps}", str(args.generator), suite_per_tag=args.suite_per_tag,
                                 fd_samples=args.fd_samples, cfg_scale=args.cfg_scale, feature_net=net,
                                 extra=["sampler=flow", f"sampler.method={method}", f"sampler.steps={steps}"])
            runs.append({"method": method, "steps": steps, "seconds": round(time.perf_counter() - start, 1), **row})
            atomic_write_json(path, report)
            logging.getLogger("argen").info("%s %d steps: ShapesEval %.3f, fd_shapes %.2f", method, steps,
                                            row["shapes"]["overall"], row["fd_shapes"]["fd"])
    plot(report, args.out / "flow_steps.png")
    return report


if __name__ == "__main__":
    main()
