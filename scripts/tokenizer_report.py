"""Reconstruction report of a trained tokenizer run on its data's held-out test split.

    python scripts/tokenizer_report.py outputs/runs/digits_vq [--out report.json] [--grid grid.png]

Reads the run's resolved config to rebuild the test dataset exactly as configured, loads the
exported tokenizer (``<run>/export``), and prints / writes PSNR, SSIM, codebook usage and perplexity (a
continuous tokenizer: the mean / std of its scaled latents and its scale factor instead).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from hydra.utils import instantiate

import argen
from argen.eval.reconstruction import evaluate_reconstruction, save_reconstruction_grid


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=None, help="JSON report (default <run>/reconstruction.json)")
    p.add_argument("--grid", type=Path, default=None, help="PNG grid (default <run>/reconstruction.png)")
    p.add_argument("--data-run", type=Path, default=None,
                   help="evaluate on the test split of this other run's data (e.g. a photos run)")
    args = p.parse_args()
    cfg = yaml.safe_load((args.run_dir / "resolved_config.yaml").read_text())
    data_cfg = yaml.safe_load((args.data_run / "resolved_config.yaml").read_text()) if args.data_run else cfg
    test_cfg = data_cfg["data"].get("test") or data_cfg["data"].get("val")
    if test_cfg is None:
        raise SystemExit("the run's data config has no test or val split to evaluate on")
    dataset = instantiate(test_cfg)
    tokenizer = argen.load(args.run_dir / "export")
    report = evaluate_reconstruction(tokenizer, dataset).to_dict()
    report.update(run=str(args.run_dir), split=test_cfg.get("split"), dataset=test_cfg["_target_"],
                  steps=cfg["trainer"]["max_steps"], tokenizer=cfg["tokenizer"])
    grid = save_reconstruction_grid(tokenizer, torch.stack([dataset[i]["image"] for i in range(32)]),
                                    args.grid or args.run_dir / "reconstruction.png")
    report["grid"] = str(grid)
    out = args.out or args.run_dir / "reconstruction.json"
    out.write_text(json.dumps(report, indent=2, sort_keys=True))
    keys = ("psnr", "ssim", "codebook_usage", "perplexity", "num_images", "per_scale", "latent_mean", "latent_std",
            "scaling_factor")
    print(json.dumps({k: report[k] for k in keys if report.get(k) is not None}))  # noqa: T201


if __name__ == "__main__":
    main()
