"""Generation paradigms side by side at equal training CPU time: raster (next-token), NAR (next-neighbour),
VAR (next-scale), xAR (next-cell or next-scale with flow matching, on a continuous tokenizer) and AR over
FlexTok's 1D tokens (sampled at several token counts k), on the shapes world (ShapesEval with 95% intervals, fd_shapes) or on digits (class
accuracy of the digits classifier, fd_digits).

On shapes every paradigm trains with the quick start's recipe (lr 3e-3, warmup 50, no EMA, batch 32:
shapes_raster_quick, shapes_nar, shapes_var_quick); on digits each with its digits experiment's (digits_nar is
digits_raster's recipe, digits_var has its own); xAR always with its own experiment's recipe (shapes_xar,
shapes_xar_scale, digits_xar: batch 64, lr 1e-3, EMA; a flow model trained at the raster recipe's lr 3e-3
without EMA is not what the paper does); each on its tokenizer's codes. Equal CPU time: the forward +
backward + optimiser step of each model is timed on its own batches, in interleaved rounds in one process,
and each paradigm gets ``ref_steps x (raster's ms per step / its ms per step)`` steps. Sampling is ancestral
at one CFG scale and temperature 1 for all (samplers: DecodingPolicy), so only the paradigm differs; xAR
samples with ``sampler=flow`` (the paper's SDE, 25 steps per entity, CFG ramped linearly over the AR steps
up to the same scale). VAR also differs in its tokenizer, a multi-scale VQ, and xAR in its, the continuous
AutoencoderKL (shapes_kl / digits_kl), each trained here for as many steps as the base one; their
reconstruction figures are in the JSON.

    python scripts/paradigm_study.py --out outputs/paradigms --base outputs/quickstart            # shapes
    python scripts/paradigm_study.py --world digits --out outputs/paradigms_digits --ref-steps 1500

``--base``: a quick start output folder (its shapes_vq export, codes and shapes feature net are reused);
without it the tokenizer and the feature net are trained here. Writes ``paradigms.json`` and
``paradigms.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from argen import load  # noqa: E402
from argen.cli.common import compose_config  # noqa: E402
from argen.cli.quickstart import codes_stage, sampling_stage  # noqa: E402
from argen.cli.train import run as train_run  # noqa: E402
from argen.generators.raster import count_parameters  # noqa: E402
from argen.io.folders import atomic_write_json  # noqa: E402

# world -> paradigm -> (generator experiment, tokenizer experiment)
WORLDS: dict[str, dict[str, tuple[str, str]]] = {
    "shapes": {"raster": ("shapes_raster_quick", "shapes_vq"), "nar": ("shapes_nar", "shapes_vq"),
               "var": ("shapes_var_quick", "shapes_msvq"), "xar": ("shapes_xar", "shapes_kl"),
               "xar_scale": ("shapes_xar_scale", "shapes_kl"), "flextok": ("shapes_flextok_ar", "shapes_flextok")},
    "digits": {"raster": ("digits_raster", "digits_vq"), "nar": ("digits_nar", "digits_vq"),
               "var": ("digits_var", "digits_msvq"), "xar": ("digits_xar", "digits_kl")},
}
ORDER = ["raster", "nar", "var", "xar", "xar_scale", "flextok"]
# a tokenizer experiment built on another's export (FlexTok on the shapes_kl AutoencoderKL's latents)
NEEDS = {"shapes_flextok_kl": "shapes_kl"}


def rows_of(paradigm: str, args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(row name, argen-sample overrides) of each evaluated row: FlexTok's AR model is one training run sampled
    at several token counts k (``num_tokens``, k passes per image); every other paradigm is one row."""
    if paradigm == "flextok":
        return [(f"flextok_k{k}", [f"num_tokens={k}"]) for k in args.flextok_k]
    return [(paradigm, sampler_overrides(paradigm))]


def order_key(name: str) -> tuple[int, int]:
    base, _, k = name.partition("_k")
    return (ORDER.index(base), int(k or 0)) if base in ORDER else (ORDER.index(name), 0)


def sampler_overrides(paradigm: str) -> list[str]:
    """xAR predicts velocities: the flow sampler (argen-sample refuses ancestral sampling of it)."""
    return ["sampler=flow"] if paradigm.startswith("xar") else []


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--world", choices=sorted(WORLDS), default="shapes")
    p.add_argument("--paradigms", nargs="+", default=["raster", "nar", "var"], choices=ORDER)
    p.add_argument("--base", type=Path, default=None, help="quick start output folder to reuse (shapes)")
    p.add_argument("--ref-steps", type=int, default=800, help="raster's training steps; the others get its CPU time")
    p.add_argument("--tokenizer-steps", type=int, default=400, help="steps of each tokenizer trained here")
    p.add_argument("--train-size", type=int, default=10_000, help="shapes scenes in the code caches")
    p.add_argument("--cfg-scale", type=float, default=3.0)
    p.add_argument("--suite-per-tag", type=int, default=20, help="ShapesEval prompts per task")
    p.add_argument("--fd-samples", type=int, default=1000)
    p.add_argument("--digits-per-class", type=int, default=50)
    p.add_argument("--replot", action="store_true", help="only redraw paradigms.png from paradigms.json")
    p.add_argument("--timing-steps", type=int, default=8, help="timed steps per model per round (3 rounds)")
    p.add_argument("--flextok-k", type=int, nargs="+", default=[4, 8, 16, 32],
                   help="FlexTok: the token counts k each image is sampled with (num_tokens)")
    p.add_argument("--flextok-tokenizer-steps", type=int, default=3000,
                   help="FlexTok's tokenizer (a rectified-flow decoder) trains its experiment's 3000 steps, not "
                        "--tokenizer-steps")
    return p.parse_args(argv)


def tokenizer_for(args: argparse.Namespace, experiment: str) -> tuple[str, Path, dict[str, Any]]:
    """(export, code cache, tokenizer record) of ``experiment``: the base's shapes_vq, or trained here."""
    base = args.base
    if base is not None and experiment == "shapes_vq" and (base / "runs" / "shapes_vq" / "export").is_dir():
        export = str(base / "runs" / "shapes_vq" / "export")
        return export, base / "codes" / "shapes", {"export": export, "reused_from": str(base)}
    needed = NEEDS.get(experiment)
    if needed is not None and not (args.out / "runs" / needed / "export" / "model.safetensors").is_file():
        train_run(compose_config("train", [f"experiment={needed}", f"paths.output_root={args.out}", "resume=auto",
                                           f"trainer.max_steps={args.tokenizer_steps}"]))
    steps = args.flextok_tokenizer_steps if "flextok" in experiment else args.tokenizer_steps
    cfg = compose_config("train", [f"experiment={experiment}", f"paths.output_root={args.out}", "resume=auto",
                                   f"trainer.max_steps={steps}"])
    start = time.perf_counter()
    result = train_run(cfg)
    record = {"export": str(result["export_dir"]), "steps": steps,
              "train_seconds": round(time.perf_counter() - start, 1),
              **{k.replace("/", "_"): v for k, v in result["metrics"].items() if k.startswith("val/")}}
    if args.world == "shapes":
        codes = codes_stage(args.out / experiment, record["export"], args.train_size)
    else:
        from argen.cli.tokenize import run as tokenize_run

        codes = tokenize_run(compose_config("tokenize", [f"tokenizer_path={record['export']}", "data=digits",
                                                         f"output_dir={args.out / 'codes' / experiment}",
                                                         "overwrite=true"]))
    return record["export"], Path(codes), record


def overrides(args: argparse.Namespace, paradigm: str, experiment: str, export: str, codes: Path) -> list[str]:
    return [f"experiment={experiment}", f"name=study_{paradigm}", f"paths.output_root={args.out}",
            f"tokenizer_path={export}", f"codes_dir={codes}", "resume=auto"]


def ms_per_step(configs: dict[str, list[str]], steps: int, rounds: int = 3) -> dict[str, float]:
    """Forward + backward + optimiser step of each configuration on its own batches, rounds interleaved."""
    import tempfile

    from argen.cli.train import build_stage
    from argen.training.generator_module import batch_condition

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ov in configs.items():
            cfg = compose_config("train", [*ov, f"paths.output_root={tmp}", "logger=none"])
            torch.manual_seed(0)
            module, datamodule = build_stage(cfg)
            loader = iter(datamodule.train_dataloader())
            batches = [next(loader) for _ in range(2)]
            opt = module.configure_optimizers()
            runs[name] = (module.generator.train(), batches, opt["optimizer"] if isinstance(opt, dict) else opt)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds + 1):  # round 0 warms up
        for name, (gen, batches, opt) in runs.items():
            t0 = time.perf_counter()
            for i in range(steps):
                b = batches[i % 2]
                gen.loss(b["tokens"], batch_condition(b)).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=False)
            if r:
                times[name].append((time.perf_counter() - t0) / steps)
    return {name: 1e3 * sorted(t)[len(t) // 2] for name, t in times.items()}


def evaluate_digits(args: argparse.Namespace, export: str, name: str, extra: list[str]) -> dict[str, Any]:
    from argen.cli.sample import run as sample_run
    from argen.eval.feature_nets import build_and_export

    net = args.out / "feature_nets" / "digits"
    if not (net / "model.safetensors").is_file():
        build_and_export("digits", net, overwrite=True)
    out = sample_run(compose_config("sample", [f"generator_path={export}", f"paths.output_root={args.out}", *extra,
                                               "overwrite=true", "classes=all", f"n_per_condition={args.digits_per_class}",
                                               f"sampler.cfg_scale={args.cfg_scale}", "eval=fd_digits",
                                               f"eval.extractor.path={net}", f"output_dir={args.out}/samples/{name}"]))
    return {"fd_digits": out["evaluation"], "sampling": {**out["sampler"], **out["stats"]}}


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {k: report["paradigms"][k] for k in sorted(report["paradigms"], key=order_key)}  # JSON keys are sorted
    fig, ax = plt.subplots(figsize=(9, 3.6))
    if report["world"] == "shapes":
        tasks = ["overall", "single_object", "two_object", "counting", "colors", "position", "color_attr"]
        width = 0.8 / len(rows)
        for k, (name, r) in enumerate(rows.items()):
            s = r["shapes"]
            ci = s.get("task_ci95") or {}
            vals = [s["overall"] if t == "overall" else s.get(t, 0.0) for t in tasks]
            lo = [s["ci95"][0] if t == "overall" else (ci.get(t) or [v, v])[0] for t, v in zip(tasks, vals)]
            hi = [s["ci95"][1] if t == "overall" else (ci.get(t) or [v, v])[1] for t, v in zip(tasks, vals)]
            xs = [i + (k - (len(rows) - 1) / 2) * width for i in range(len(tasks))]
            err = [[v - a for v, a in zip(vals, lo)], [b - v for v, b in zip(vals, hi)]]
            fd = r["fd_shapes"].get("fd")
            ax.bar(xs, vals, width, yerr=err, capsize=2, color=f"C{k}",
                   label=f"{name}: {r['steps']} steps, {r['train_seconds']:.0f} s, fd_shapes {fd:.2f}")
        ax.set_xticks(range(len(tasks)), tasks, fontsize=8)
        ax.set_ylabel("ShapesEval (95% CI)")
        ax.legend(fontsize=7)
    else:
        names = list(rows)
        acc = [100 * (rows[n]["fd_digits"].get("class_accuracy") or 0.0) for n in names]
        ax.bar(names, acc, color=[f"C{k}" for k in range(len(names))])
        for k, n in enumerate(names):
            ax.text(k, acc[k], f"{acc[k]:.1f}%\nfd {rows[n]['fd_digits'].get('fd', float('nan')):.2f}\n"
                               f"{rows[n]['steps']} steps", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("digits classified as their class (%)")
        ax.set_ylim(0, 125)
    ax.set_title(f"{report['world']}: equal training CPU time ({report['ref_steps']} raster steps)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse(argv)
    if args.replot:
        report = json.loads((args.out / "paradigms.json").read_text())
        plot(report, args.out / "paradigms.png")
        return report
    args.out.mkdir(parents=True, exist_ok=True)
    world = WORLDS[args.world]
    tokenizers: dict[str, tuple[str, Path, dict[str, Any]]] = {}
    for paradigm in args.paradigms:
        tok = world[paradigm][1]
        if tok not in tokenizers:
            tokenizers[tok] = tokenizer_for(args, tok)
    configs = {p: overrides(args, p, world[p][0], *tokenizers[world[p][1]][:2]) for p in args.paradigms}
    timing = ms_per_step(configs, args.timing_steps)
    ref = timing.get("raster", next(iter(timing.values())))
    report: dict[str, Any] = {"world": args.world, "ref_steps": args.ref_steps, "ms_per_step": timing,
                              "tokenizers": {k: v[2] for k, v in tokenizers.items()}, "cfg_scale": args.cfg_scale,
                              "timing": "median of 3 interleaved rounds of forward+backward+optimiser step, one "
                                        "process, 2 threads, nothing else running", "paradigms": {}}
    for paradigm, ov in configs.items():
        steps = max(1, round(args.ref_steps * ref / timing[paradigm]))
        cfg = compose_config("train", [*ov, f"trainer.max_steps={steps}"])
        start = time.perf_counter()
        result = train_run(cfg)
        row: dict[str, Any] = {"experiment": world[paradigm][0], "steps": steps,
                               "train_seconds": round(time.perf_counter() - start, 1), "export": str(result["export_dir"]),
                               **count_parameters(load(result["export_dir"])),
                               **{k.replace("/", "_"): v for k, v in result["metrics"].items() if k.startswith("val/")}}
        for name, extra in rows_of(paradigm, args):
            entry = dict(row)
            if args.world == "shapes":
                net = (args.base or args.out) / "feature_nets" / "shapes"
                if not (net / "model.safetensors").is_file():
                    from argen.eval.feature_nets import build_and_export

                    build_and_export("shapes", net, overwrite=True)
                entry.update(sampling_stage(args.out / f"study_{name}", row["export"], suite_per_tag=args.suite_per_tag,
                                            fd_samples=args.fd_samples, cfg_scale=args.cfg_scale, feature_net=net,
                                            extra=extra))
            else:
                entry.update(evaluate_digits(args, row["export"], name, extra))
            report["paradigms"][name] = entry
            atomic_write_json(args.out / "paradigms.json", report)
    plot(report, args.out / "paradigms.png")
    return report


if __name__ == "__main__":
    main()
