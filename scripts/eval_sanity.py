"""Sanity ordering of the domain Fréchet distances on real data (issue: evaluation).

fd(real, real other half) << fd(real, blurred real) << fd(real, noise), for digits and shapes,
each at the same N, with the feature networks exported under --nets (trained if missing).

    python scripts/eval_sanity.py --nets outputs/feature_nets --out outputs/eval_sanity.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torchvision.transforms.functional as TF

import argen
from argen.data.base import tensor_to_uint8
from argen.data.digits import DigitsDataset
from argen.data.shapes import ShapesDataset
from argen.eval import fid as M
from argen.eval.feature_nets import build_and_export


def uint8(images: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(tensor_to_uint8(images)).permute(0, 3, 1, 2)


@torch.no_grad()
def features(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([net(b) for b in uint8(images).split(256)]).float()


def ordering(net: torch.nn.Module, real_a: torch.Tensor, real_b: torch.Tensor, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(real_b.shape, generator=g) * 2 - 1
    fa = features(net, real_a)
    out = {"n": float(real_a.shape[0])}
    sets = [("real_other_half", real_b)]
    # Two blur strengths: sigma 1 px is barely visible on digits (already 4x upsampled from 8x8).
    sets += [(f"blurred_sigma{s:g}", TF.gaussian_blur(real_b, kernel_size=2 * round(3 * s) + 1, sigma=s)) for s in (1.0, 2.0)]
    sets += [("noise", noise)]
    for name, imgs in sets:
        out[name] = M.fd_features(fa, features(net, imgs))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", type=Path, default=Path("outputs/feature_nets"))
    p.add_argument("--out", type=Path, default=Path("outputs/eval_sanity.json"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    result = {}
    for kind in ("digits", "shapes"):
        if not (args.nets / kind / "model.safetensors").is_file():
            build_and_export(kind, args.nets / kind, seed=args.seed)
        net = argen.load(args.nets / kind).eval()
        if kind == "digits":  # test split, two disjoint halves of 180
            imgs = torch.stack([s["image"] for s in DigitsDataset(split="test", image_size=32)])
            half = imgs.shape[0] // 2
            a, b = imgs[:half], imgs[half:2 * half]
        else:  # two disjoint test-split sets of 1000
            ds = ShapesDataset(split="test", size=2000, image_size=32, seed=args.seed)
            imgs = torch.stack([ds[i]["image"] for i in range(2000)])
            a, b = imgs[:1000], imgs[1000:]
        result[f"fd_{kind}"] = ordering(net, a, b, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
