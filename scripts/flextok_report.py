"""Coarse-to-fine reconstructions of a trained FlexTok run: PSNR / SSIM, fd and decode time per number of kept
tokens k = 1, 2, 4, .., K on the run's held-out test split, one grid (rows: originals, then each k) and a plot.

    python scripts/flextok_report.py outputs/runs/shapes_flextok [--n 256] [--fd-n 500] [--steps 25]

fd: fd_shapes (the shapes attribute net, made under outputs/feature_nets/shapes when missing) on a shapes
run, with its real-vs-real floor; a photos run reports PSNR / SSIM only. Writes <run>/flextok_report.json,
flextok_grid.png and flextok_report.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml
from hydra.utils import instantiate
from torchvision.utils import make_grid, save_image

import argen
from argen.eval.reconstruction import evaluate_reconstruction
from tokenizers_vq.flextok import TokenPrefix


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--n", type=int, default=256, help="test images for PSNR / SSIM (default 256)")
    p.add_argument("--fd-n", type=int, default=500, help="images per side of fd_shapes (shapes runs; 0: skip)")
    p.add_argument("--steps", type=int, default=None, help="decoder Euler steps (default: the tokenizer's)")
    p.add_argument("--guidance", type=float, default=None, help="decoder guidance scale (default: the tokenizer's)")
    p.add_argument("--feature-net", type=Path, default=Path("outputs/feature_nets/shapes"))
    args = p.parse_args()
    torch.manual_seed(0)
    cfg = yaml.safe_load((args.run_dir / "resolved_config.yaml").read_text())
    test_cfg = dict(cfg["data"].get("test") or cfg["data"]["val"])
    dataset = instantiate(test_cfg)
    subset = torch.utils.data.Subset(dataset, range(min(args.n, len(dataset))))
    tok = argen.load(args.run_dir / "export").eval()
    if args.steps is not None:
        tok.decode_steps = args.steps
    if args.guidance is not None:
        tok.guidance_scale = args.guidance
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= tok.num_registers]
    shapes = "shapes" in test_cfg["_target_"].lower()
    net = None
    if shapes and args.fd_n:
        from argen.eval.feature_nets import build_and_export, load_feature_net
        from argen.eval.roundtrip import fd_shapes_roundtrip

        if not (args.feature_net / "model.safetensors").is_file():
            build_and_export("shapes", args.feature_net, overwrite=True)
        net = load_feature_net(kind="shapes", path=str(args.feature_net))
    shown = torch.stack([dataset[i]["image"] for i in range(8)])
    rows, per_k = [shown], []
    for k in ks:
        view = TokenPrefix(tok, k)
        start = time.perf_counter()
        rec = evaluate_reconstruction(view, subset, batch_size=64, progress=False)
        seconds = time.perf_counter() - start
        row = {"k": k, "psnr": rec.psnr, "ssim": rec.ssim, "num_images": rec.num_images,
               "seconds_per_image": seconds / rec.num_images}
        if net is not None:
            fd = fd_shapes_roundtrip(view, net, n=args.fd_n)
            row.update(fd_shapes=fd["fd"], fd_floor=fd["floor"].get("fd"), fd_ci95=fd.get("fd_ci95"))
        with torch.no_grad():
            rows.append(view.decode(view.encode(shown), torch.arange(len(shown))).clamp(-1, 1))
        per_k.append(row)
        print(json.dumps(row))  # noqa: T201
    grid = make_grid(torch.cat(rows), nrow=len(shown), normalize=True, value_range=(-1, 1), padding=1)
    save_image(grid, args.run_dir / "flextok_grid.png")
    report = {"run": str(args.run_dir), "dataset": test_cfg["_target_"], "split": test_cfg.get("split"),
              "decode_steps": tok.decode_steps, "guidance_scale": tok.guidance_scale, "guidance": tok.guidance,
              "num_registers": tok.num_registers, "codebook": tok.fsq.codebook_size, "per_k": per_k,
              "grid": str(args.run_dir / "flextok_grid.png"), "grid_rows": ["original"] + [f"k={k}" for k in ks]}
    (args.run_dir / "flextok_report.json").write_text(json.dumps(report, indent=2))
    _plot(report, args.run_dir / "flextok_report.png")


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in report["per_k"]]
    panels = [("psnr", "PSNR (dB)"), ("ssim", "SSIM")]
    if "fd_shapes" in report["per_k"][0]:
        panels.append(("fd_shapes", "fd_shapes"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, label) in zip(axes, panels):
        ax.plot(ks, [r[key] for r in report["per_k"]], "o-")
        if key == "fd_shapes" and report["per_k"][0].get("fd_floor") is not None:
            ax.axhline(report["per_k"][0]["fd_floor"], ls="--", c="grey", label="real-vs-real floor")
            ax.legend()
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens kept k")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"FlexTok reconstructions vs k ({Path(report['run']).name}, {report['decode_steps']} Euler steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
