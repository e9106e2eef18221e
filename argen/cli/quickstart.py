"""argen-quickstart: the embedded default, end to end on a CPU.

1. trains the tiny VQ tokenizer on the shapes world, exports it, measures reconstruction on
   held-out shapes (PSNR, SSIM, codebook usage, round-trip ShapesEval / fd_shapes);
2. tokenizes the training images once and trains a text-conditional raster GPT on the codes;
3. samples the shapes prompt suite (GenEval format) into a grid + GenEval layout and scores it
   with ShapesEval, and samples the held-out test captions for ``fd_shapes``;
and writes everything to ``<output>/report.json``. Re-running resumes (finished runs are not
retrained; sampling is redone).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from omegaconf import OmegaConf

from argen.cli.common import compose_config
from argen.cli.train import run as train_run
from argen.data.shapes import ShapesDataset
from argen.eval.reconstruction import evaluate_reconstruction, save_reconstruction_grid
from argen.io.export import load
from argen.io.folders import atomic_write_json

log = logging.getLogger("argen")


DESCRIPTION = """argen-quickstart: the embedded default end to end on a CPU: trains the shapes VQ tokenizer and
a text-conditional raster GPT on its codes, then samples the shapes prompt suite and scores it."""
EPILOG = """Example:
  argen-quickstart --output outputs/quickstart --steps 400 --generator-steps 800
  argen-quickstart --preset best --output outputs/best      # experiment=shapes_best, about 35 minutes
Writes <output>/report.json; re-running resumes (finished runs are not retrained)."""


# quick: the README's first command (<= 10 minutes on 2 cores, installation included);
# best: the longer preset (experiment=shapes_best: 100k scenes, the generator for ~45 CPU-minutes).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"tokenizer_steps": 400, "generator": "shapes_raster_quick", "generator_steps": 800,
              "train_size": 10_000, "data": []},
    "best": {"tokenizer_steps": 600, "generator": "shapes_best", "generator_steps": None,
             "train_size": 100_000, "data": []},
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="argen-quickstart", usage="argen-quickstart [options] [overrides ...]",
                                description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="outputs/quickstart", metavar="DIR",
                   help="folder for runs, grids and report.json (%(default)s)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                   help="quick (default) or best (shapes_best, ~35 min)")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="tokenizer training steps (the preset's: quick 400, best 600)")
    p.add_argument("--eval-images", type=int, default=1000, metavar="N",
                   help="held-out shapes images to evaluate on (%(default)s)")
    p.add_argument("--generator-steps", type=int, default=None, metavar="N",
                   help="generator steps (the preset's: quick 800 at batch 32, best shapes_best's)")
    p.add_argument("--cfg-scale", type=float, default=3.0, metavar="S",
                   help="classifier-free guidance scale of the samples (%(default)s)")
    p.add_argument("--suite-per-tag", type=int, default=20, metavar="N",
                   help="ShapesEval prompts per task, every task filled to it (%(default)s)")
    p.add_argument("--fd-samples", type=int, default=1000, metavar="N", help="samples for fd_shapes (%(default)s)")
    p.add_argument("--sequential", action="store_true", help="train the feature network after the tokenizer")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for the tokenizer run, e.g. seed=1")
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


def _feature_net_dir(out: Path) -> Path:
    return out / "feature_nets" / "shapes"


def _train_feature_net(net_dir: str, seed: int, steps: int | None) -> None:
    """(In its own process, one thread.) The shapes attribute network fd_shapes extracts features with."""
    from argen.eval.feature_nets import build_and_export

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    build_and_export("shapes", net_dir, seed=seed, steps=steps, overwrite=True)


class FeatureNetJob:
    """Trains the feature network in a second process while the tokenizer trains (issue 14: the two are
    independent, and on a 2-core CPU one thread each finishes both sooner than two threads one after the
    other). The main process runs on one thread until :meth:`wait`, which restores its thread count."""

    def __init__(self, out: Path, *, seed: int = 0, parallel: bool = True, steps: int | None = None) -> None:
        import multiprocessing as mp

        self.net_dir, self.seed, self.steps, self.process = _feature_net_dir(out), seed, steps, None
        self.threads = torch.get_num_threads()
        if (self.net_dir / "model.safetensors").is_file():
            return
        log.info("training the shapes attribute network for fd_shapes (once) -> %s%s", self.net_dir,
                 ", in a second process beside the tokenizer" if parallel and self.threads > 1 else "")
        if parallel and self.threads > 1:
            self.process = mp.get_context("spawn").Process(target=_train_feature_net,
                                                           args=(str(self.net_dir), seed, steps), daemon=True)
            self.process.start()
            torch.set_num_threads(max(self.threads - 1, 1))

    def wait(self) -> Path:
        """The trained network's folder (trained here, on every thread, if no process was started)."""
        if self.process is not None:
            self.process.join()
            torch.set_num_threads(self.threads)
            if self.process.exitcode != 0:
                raise RuntimeError(f"training the shapes feature network failed (exit code {self.process.exitcode}); "
                                   f"see the log above")
            self.process = None
        if not (self.net_dir / "model.safetensors").is_file():
            from argen.eval.feature_nets import build_and_export

            build_and_export("shapes", self.net_dir, seed=self.seed, steps=self.steps, overwrite=True)
        return self.net_dir


def roundtrip_stage(out: Path, export_dir: str, *, seed: int = 0, net_dir: Path | None = None) -> dict[str, Any]:
    """Composition through the tokenizer: ShapesEval and fd_shapes of reconstructions."""
    from argen.eval.roundtrip import fd_shapes_roundtrip, shapes_eval_roundtrip

    net_dir = net_dir or FeatureNetJob(out, seed=seed, parallel=False).wait()
    tokenizer = load(export_dir)
    shapes = shapes_eval_roundtrip(tokenizer, out, seed=seed)
    fd = fd_shapes_roundtrip(tokenizer, load(net_dir), seed=seed)
    return {"shapes_eval": shapes, "fd_shapes": fd}


def codes_stage(out: Path, tokenizer_export: str, train_size: int = 10000, data: list[str] | None = None) -> Path:
    """The shapes training images as codes of this tokenizer (rebuilt when the tokenizer, the number of
    scenes or the data settings changed)."""
    from argen.cli.tokenize import run as tokenize_run
    from argen.data.codes import MANIFEST
    from argen.training.prepare import tokenizer_sha256

    codes = out / "codes" / "shapes"
    cfg = compose_config("tokenize", [f"tokenizer_path={tokenizer_export}", "data=shapes", f"output_dir={codes}",
                                      f"data.train.size={train_size}", "data.val.size=512", "overwrite=true",
                                      *(data or [])])
    if (codes / MANIFEST).is_file():
        manifest = json.loads((codes / MANIFEST).read_text())
        made_with = manifest["tokenizer"]["sha256"]
        train = (manifest.get("preprocessing") or {}).get("datasets", {}).get("train") or {}
        wanted = {k: v for k, v in OmegaConf.to_container(cfg.data.train, resolve=False).items() if k != "image_size"}
        if made_with == tokenizer_sha256(tokenizer_export) and all(train.get(k) == v for k, v in wanted.items()
                                                                   if k != "seed"):
            return codes
    return tokenize_run(cfg)


def generator_stage(out: Path, tokenizer_export: str, steps: int | None, overrides: list[str], *,
                    experiment: str = "shapes_raster_quick", codes: Path | None = None) -> dict[str, Any]:
    """Train + export the text-conditional raster GPT (nano preset, ``experiment``'s recipe) on the
    shapes codes."""
    from argen.generators.raster import count_parameters

    codes = codes or codes_stage(out, tokenizer_export)
    ov = [f"experiment={experiment}", "name=shapes_raster", f"paths.output_root={out}",
          f"tokenizer_path={tokenizer_export}", f"codes_dir={codes}", "resume=auto",
          *([f"trainer.max_steps={steps}"] if steps is not None else []), *overrides]
    cfg = compose_config("train", ov)
    start = time.perf_counter()
    result = train_run(cfg)
    section: dict[str, Any] = {"export": str(result["export_dir"]), "train_seconds": round(time.perf_counter() - start, 1),
                               "steps": int(cfg.trainer.max_steps), "preset": "raster_nano", "codes": str(codes),
                               **count_parameters(load(result["export_dir"]))}
    section.update({k.replace("/", "_"): v for k, v in result["metrics"].items() if k.startswith("val/")})
    return section


def sampling_stage(out: Path, generator_export: str, *, suite_per_tag: int, fd_samples: int, cfg_scale: float,
                   seed: int = 0, feature_net: Path | None = None, extra: list[str] | None = None) -> dict[str, Any]:
    """ShapesEval of the prompt suite's samples, and fd_shapes of samples for held-out test captions (on the
    shapes feature network ``feature_net``, default ``out/feature_nets/shapes``); ``extra``: more argen-sample
    overrides (``sampler=flow`` for a flow generator)."""
    from argen.cli.sample import run as sample_run

    common = [f"generator_path={generator_export}", f"paths.output_root={out}", "overwrite=true", f"seed={seed}",
              *(extra or []), f"sampler.cfg_scale={cfg_scale}"]
    suite = sample_run(compose_config("sample", [*common, "suite=shapes", f"suite_per_tag={suite_per_tag}", "suite_fill=true",
                                                 "n_per_condition=4", f"output_dir={out}/samples/shapes_suite",
                                                 "eval=shapes"]))
    test = ShapesDataset(split="test", size=fd_samples, image_size=32, seed=seed)
    prompts = out / "samples" / "test_captions.txt"
    prompts.write_text("\n".join(test[i]["caption"] for i in range(fd_samples)) + "\n")
    fd = sample_run(compose_config("sample", [*common, f"prompt_file={prompts}", "n_per_condition=1",
                                              f"output_dir={out}/samples/test_captions", "eval=fd_shapes",
                                              f"eval.extractor.path={feature_net or out / 'feature_nets' / 'shapes'}"]))
    shapes = suite["evaluation"]
    return {"shapes": {"overall": shapes["overall"], **(shapes.get("task_scores") or {}),
                       "n_prompts": shapes.get("n_prompts"), "n_images": shapes.get("n_images"),
                       "ci95": [shapes.get("ci_low"), shapes.get("ci_high")], "task_ci95": shapes.get("task_ci"),
                       "grid": suite["files"]["grid"],
                       "samples": suite["files"].get("geneval")},
            "fd_shapes": fd["evaluation"],
            "sampling": {**suite["sampler"], **suite["stats"], "num_images": suite["num_images"]}}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = _parse(argv)
    preset = PRESETS[args.preset]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    feature_net = FeatureNetJob(out, parallel=not args.sequential)
    steps = preset["tokenizer_steps"] if args.steps is None else args.steps
    report: dict[str, Any] = {"preset": args.preset,
                              "tokenizer": tokenizer_stage(out, steps, args.overrides, args.eval_images)}
    codes = codes_stage(out, report["tokenizer"]["export"], preset["train_size"], preset["data"])
    # Reconstructions of the shapes world judged like generations will be (issue: evaluation);
    # generated samples get their own eval.shapes / eval.fd_shapes once a generator exists.
    report["tokenizer"]["roundtrip"] = roundtrip_stage(out, report["tokenizer"]["export"], net_dir=feature_net.wait())
    gen_steps = preset["generator_steps"] if args.generator_steps is None else args.generator_steps
    report["generator"] = generator_stage(out, report["tokenizer"]["export"], gen_steps, [],
                                          experiment=preset["generator"], codes=codes)
    report["eval"] = sampling_stage(out, report["generator"]["export"], suite_per_tag=args.suite_per_tag,
                                    fd_samples=args.fd_samples, cfg_scale=args.cfg_scale)
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    path = out / "report.json"
    atomic_write_json(path, report)
    t = report["tokenizer"]
    log.info("tokenizer on held-out shapes: PSNR %.2f dB, SSIM %.4f, codebook usage %.1f%%; flat patches %.0f%% of "
             "tokens, their codes' entropy given the colour %.2f nats -> %s", t["psnr"], t["ssim"],
             100 * t["codebook_usage"], 100 * (t.get("flat_tokens") or 0.0), t.get("flat_code_entropy") or 0.0, path)
    rt = t["roundtrip"]
    log.info("round trip: ShapesEval originals %.3f, reconstructions %.3f; %s %.4f (floor %.4f)",
             rt["shapes_eval"]["originals"]["overall"], rt["shapes_eval"]["reconstructions"]["overall"],
             rt["fd_shapes"]["metric"], rt["fd_shapes"]["fd"], rt["fd_shapes"]["floor"]["fd"])
    ev = report["eval"]
    log.info("generated samples: ShapesEval overall %.3f (%s); fd_shapes %.4f (real-vs-real floor %.4f); grid %s",
             ev["shapes"]["overall"], ", ".join(f"{k} {v:.2f}" for k, v in ev["shapes"].items()
                                                 if isinstance(v, float) and k != "overall"),
             ev["fd_shapes"]["fd"], (ev["fd_shapes"].get("floor") or {}).get("fd", float("nan")), ev["shapes"]["grid"])


if __name__ == "__main__":
    main()
