"""Where does a generator training step's time go? Tokens/s and FLOP utilisation of one argen-train
configuration on this machine, against the fp32 matmul peak measured in the same process.

It builds the run exactly as ``argen-train`` does (the overrides after ``--``), then times, on the same
batches: the data loader alone; forward + backward (``generator.loss`` and ``backward``); the optimiser
step with gradient clipping; the EMA update; and the whole Lightning step (``Trainer.fit`` with the run's
callbacks, logging and progress as configured), from one ``on_train_batch_end`` to the next. The model's
FLOPs per step are counted by ``torch.utils.flop_counter`` on a real forward + backward (matmuls and
attention; elementwise work is not counted, so utilisation is of the matmul units).

    python scripts/bench_training.py --out outputs/bench_training -- experiment=shapes_raster \\
        generator=raster_nano tokenizer_path=outputs/quickstart/runs/shapes_vq/export \\
        codes_dir=outputs/quickstart/codes/shapes data.global_batch_size=32

Writes ``training.json`` (per part: ms per step, share; tokens/s, GFLOP/s, utilisation; the machine and
the threads) and ``training.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _overrides  # noqa: E402


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv, overrides = _overrides.split(argv)
    p = _overrides.parser(__doc__)
    p.add_argument("--steps", type=int, default=30, help="timed steps per part (after --warmup)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--label", default="", help="name of this configuration in the JSON and the plot")
    p.add_argument("--no-lightning", action="store_true", help="skip the Trainer.fit measurement")
    return p.parse_args(argv), overrides


def matmul_peak(n: int = 1024, reps: int = 10) -> float:
    """fp32 GFLOP/s of an n x n x n matmul, best of ``reps``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def timed(fn: Callable[[], Any], steps: int, warmup: int) -> float:
    """Mean seconds of ``fn`` over ``steps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def cycle(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def count_flops(module: Any, batch: dict[str, Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from argen.training.generator_module import batch_condition

    with FlopCounterMode(display=False) as counter:
        module.generator.loss(batch["tokens"], batch_condition(batch)).loss.backward()
    module.generator.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def raw_parts(module: Any, datamodule: Any, args: argparse.Namespace) -> tuple[dict[str, float], dict[str, Any]]:
    """Seconds per step of each part of a training step, outside Lightning, on the run's own batches."""
    from argen.training.generator_module import batch_condition

    loader = datamodule.train_dataloader()
    batches = cycle(loader)
    parts = {"data loading": timed(lambda: next(batches), args.steps, args.warmup)}
    fixed = [next(batches) for _ in range(4)]
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    gen, i = module.generator.train(), [0]

    def fwd_bwd() -> None:
        batch = fixed[i[0] % len(fixed)]
        i[0] += 1
        gen.loss(batch["tokens"], batch_condition(batch)).loss.backward()

    parts["forward + backward"] = timed(fwd_bwd, args.steps, args.warmup)

    def optimise() -> None:
        if module.gradient_clip:
            torch.nn.utils.clip_grad_norm_(gen.parameters(), module.gradient_clip)
        opt.step()
        opt.zero_grad(set_to_none=False)

    parts["optimiser step + clipping"] = timed(optimise, args.steps, args.warmup)
    if module.ema is not None:
        parts["EMA update"] = timed(lambda: module.ema.update(gen), args.steps, args.warmup)
    return parts, fixed[0]


def lightning_step(cfg: Any, args: argparse.Namespace) -> float:
    """Seconds per step of Trainer.fit as argen-train builds it (its callbacks, logging, progress)."""
    import lightning as L

    from argen.cli.train import _callbacks, build_stage
    from argen.core.config import build
    from argen.training.checkpoint_io import AtomicCheckpointIO

    stamps: list[float] = []

    class Stamp(L.Callback):
        def on_train_batch_end(self, *a: Any, **k: Any) -> None:
            stamps.append(time.perf_counter())

    module, datamodule = build_stage(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build(cfg.trainer, "trainer", callbacks=[*_callbacks(cfg), Stamp()], logger=False,
                        plugins=[AtomicCheckpointIO()], use_distributed_sampler=False, default_root_dir=tmp,
                        max_steps=args.warmup + args.steps, val_check_interval=None, check_val_every_n_epoch=None,
                        limit_val_batches=0)
        trainer.fit(module, datamodule=datamodule)
    return (stamps[-1] - stamps[args.warmup - 1]) / (len(stamps) - args.warmup)


def run(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    from argen.cli.common import compose_config
    from argen.cli.train import build_stage

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config("train", [f"paths.output_root={tmp}", "logger=none", *overrides])
        torch.manual_seed(0)
        module, datamodule = build_stage(cfg)
        peak = matmul_peak()
        parts, batch = raw_parts(module, datamodule, args)
        flops = count_flops(module, batch)
        lightning = None if args.no_lightning else lightning_step(cfg, args)
        peak_after = matmul_peak()
    tokens = int(batch["tokens"].numel())
    compute = parts["forward + backward"]
    raw = sum(parts.values())
    step = lightning if lightning is not None else raw
    report: dict[str, Any] = {
        "label": args.label, "overrides": overrides, "threads": torch.get_num_threads(),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__},
        "batch_tokens": tokens, "model_gflop_per_step": flops / 1e9,
        "matmul_peak_gflops": {"before": peak, "after": peak_after},
        "parts_ms": {k: 1e3 * v for k, v in parts.items()},
        "raw_step_ms": 1e3 * raw, "lightning_step_ms": None if lightning is None else 1e3 * lightning,
        "lightning_overhead_ms": None if lightning is None else 1e3 * (lightning - raw),
        "tokens_per_s": tokens / step, "steps_per_s": 1 / step,
        "achieved_gflops": flops / step / 1e9, "utilisation": flops / step / 1e9 / max(peak, peak_after),
        "forward_backward_utilisation": flops / compute / 1e9 / max(peak, peak_after),
    }
    return report


def plot(reports: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.8 * len(reports)))
    names = list(dict.fromkeys(k for r in reports for k in r["parts_ms"])) + ["Lightning overhead"]
    for y, r in enumerate(reports):
        left = 0.0
        values = dict(r["parts_ms"], **{"Lightning overhead": max(r.get("lightning_overhead_ms") or 0.0, 0.0)})
        for k, name in enumerate(names):
            width = values.get(name, 0.0)
            ax.barh(y, width, left=left, color=f"C{k}", label=name if y == 0 else None)
            left += width
        ax.text(left, y, f"  {r['tokens_per_s']:.0f} tok/s, {100 * r['utilisation']:.0f}% of peak", va="center")
    ax.set_yticks(range(len(reports)), [r["label"] or f"run {i}" for i, r in enumerate(reports)])
    ax.set_xlabel("ms per training step")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    args, overrides = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "training.json"
    reports = json.loads(path.read_text())["runs"] if path.is_file() else []
    report = run(args, overrides)
    reports = [r for r in reports if r["label"] != report["label"]] + [report]
    path.write_text(json.dumps({"runs": reports}, indent=2))
    plot(reports, args.out / "training.png")
    print(json.dumps(report, indent=1))  # noqa: T201


if __name__ == "__main__":
    main()
