"""argen-quickstart: the embedded default, end to end on a CPU.

Trains the tiny VQ tokenizer on the shapes world, exports it, measures reconstruction on
held-out shapes (PSNR, SSIM, codebook usage), writes a reconstruction grid and
``<output>/report.json``. Re-running resumes (a finished run is not retrained).
Later stages (generator, sampling, evaluation) extend this same command.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from argen.cli.common import compose_config
from argen.cli.train import run as train_run
from argen.data.shapes import ShapesDataset
from argen.eval.reconstruction import evaluate_reconstruction, save_reconstruction_grid
from argen.io.export import load

log = logging.getLogger("argen")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="argen-quickstart", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="outputs/quickstart", help="folder for runs, grids and report.json")
    p.add_argument("--steps", type=int, default=None, help="tokenizer training steps (default: the experiment's)")
    p.add_argument("--eval-images", type=int, default=1000, help="held-out shapes images to evaluate on")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for the tokenizer run, e.g. seed=1")
    return p.parse_args(argv)


def tokenizer_stage(out: Path, steps: int | None, overrides: list[str], eval_images: int) -> dict[str, Any]:
    """Train + export + evaluate the shapes VQ tokenizer; returns its report section."""
    ov = ["experiment=shapes_vq", f"paths.output_root={out}", "resume=auto", *overrides]
    if steps is not None:
        ov.append(f"trainer.max_steps={steps}")
    cfg = compose_config("train", ov)
    start = time.perf_counter()
    result = train_run(cfg)
    train_seconds = time.perf_counter() - start
    tokenizer = load(result["export_dir"])
    test = ShapesDataset(split="test", size=eval_images, image_size=int(cfg.tokenizer.image_size), seed=int(cfg.seed))
    report = evaluate_reconstruction(tokenizer, test)
    grid_images = torch.stack([test[i]["image"] for i in range(32)])
    grid = save_reconstruction_grid(tokenizer, grid_images, out / "tokenizer_reconstructions.png")
    section = report.to_dict()
    section.update(export=str(result["export_dir"]), grid=str(grid), train_seconds=round(train_seconds, 1),
                   steps=int(cfg.trainer.max_steps), eval_split="shapes/test", dataset="shapes",
                   image_size=int(cfg.tokenizer.image_size))
    return section


def roundtrip_stage(out: Path, export_dir: str, *, seed: int = 0) -> dict[str, Any]:
    """Composition through the tokenizer: ShapesEval and fd_shapes of reconstructions."""
    from argen.eval.feature_nets import build_and_export
    from argen.eval.roundtrip import fd_shapes_roundtrip, shapes_eval_roundtrip

    net_dir = out / "feature_nets" / "shapes"
    if not (net_dir / "model.safetensors").is_file():
        log.info("training the shapes attribute network for fd_shapes (once) -> %s", net_dir)
        build_and_export("shapes", net_dir, seed=seed, overwrite=True)
    tokenizer = load(export_dir)
    shapes = shapes_eval_roundtrip(tokenizer, out, seed=seed)
    fd = fd_shapes_roundtrip(tokenizer, load(net_dir), seed=seed)
    return {"shapes_eval": shapes, "fd_shapes": fd}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = _parse(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"tokenizer": tokenizer_stage(out, args.steps, args.overrides, args.eval_images)}
    # Reconstructions of the shapes world judged like generations will be (issue: evaluation);
    # generated samples get their own eval.shapes / eval.fd_shapes once a generator exists.
    report["tokenizer"]["roundtrip"] = roundtrip_stage(out, report["tokenizer"]["export"])
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=True))
    t = report["tokenizer"]
    log.info("tokenizer on held-out shapes: PSNR %.2f dB, SSIM %.4f, codebook usage %.1f%% -> %s",
             t["psnr"], t["ssim"], 100 * t["codebook_usage"], path)
    rt = t["roundtrip"]
    log.info("round trip: ShapesEval originals %.3f, reconstructions %.3f; %s %.4f (floor %.4f)",
             rt["shapes_eval"]["originals"]["overall"], rt["shapes_eval"]["reconstructions"]["overall"],
             rt["fd_shapes"]["metric"], rt["fd_shapes"]["fd"], rt["fd_shapes"]["floor"]["fd"])


if __name__ == "__main__":
    main()
