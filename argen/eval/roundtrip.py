"""Tokenizer round-trip evaluation on the shapes world: does composition survive encode/decode?

* ShapesEval of reconstructions: ground-truth renders of a GenEval-format shapes prompt suite,
  passed through the tokenizer, written in GenEval's folder layout and scored by the exact
  shapes judge with GenEval's rules (the originals are scored too: the positive control).
* fd_shapes(real, reconstructions) on the shapes attribute network, with the real-vs-real floor
  at the same N.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from argen.data.base import tensor_to_uint8, uint8_to_tensor
from argen.data.shapes import ShapesDataset, ShapesWorld, make_prompt_suite, realize_prompt, render_scene
from argen.eval import fid as M
from argen.eval import geneval
from argen.eval.shapes_judge import ShapesJudge


@torch.no_grad()
def _roundtrip(tokenizer: Any, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """uint8 (N, H, W, 3) -> reconstructions, uint8 (N, H, W, 3)."""
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.stack([uint8_to_tensor(a) for a in images[start:start + batch_size]])
        seeds = torch.arange(start, start + len(x))  # a stochastic decoder (FlexTok): one seed per image
        out.append(tensor_to_uint8(tokenizer.decode(tokenizer.encode(x), seeds)))
    return np.concatenate(out)


def shapes_eval_roundtrip(tokenizer: Any, out: Path, *, n_per_tag: int = 20, images_per_prompt: int = 4,
                          seed: int = 0, fill: bool = True) -> dict[str, Any]:
    """ShapesEval of the originals and of their reconstructions (GenEval layouts under ``out``), on the
    prompt suite the quick start samples (``fill``: every task ``n_per_tag`` prompts)."""
    size = int(tokenizer.image_size)
    world = ShapesWorld(image_size=size)
    suite = make_prompt_suite(world, n_per_tag=n_per_tag, seed=seed, fill=fill)
    rng = np.random.default_rng(seed)
    originals = [[render_scene(realize_prompt(rng, md, world))[0] for _ in range(images_per_prompt)] for md in suite]
    flat = np.stack([im for group in originals for im in group])
    recon = _roundtrip(tokenizer, flat).reshape(len(suite), images_per_prompt, size, size, 3)
    judge = ShapesJudge()
    result: dict[str, Any] = {"num_prompts": len(suite), "images_per_prompt": images_per_prompt}
    for name, groups in (("originals", originals), ("reconstructions", recon)):
        root = out / f"shapes_geneval_{name}"
        for i, (md, imgs) in enumerate(zip(suite, groups)):
            geneval.write_sample_folder(root, i, md, list(imgs))
        report, records = geneval.evaluate_folder(root, judge, progress=False)
        geneval.write_results_jsonl(records, root / "results.jsonl")
        result[name] = report.to_dict()
    return result


def fd_shapes_roundtrip(tokenizer: Any, feature_net: Any, *, n: int = 1000, seed: int = 0) -> dict[str, Any]:
    """fd_shapes(real test A, reconstructions of real test B) and the floor fd_shapes(A, B)."""
    size = int(tokenizer.image_size)
    ds = ShapesDataset(split="test", size=2 * n, image_size=size, seed=seed)
    real = np.stack([tensor_to_uint8(ds[i]["image"]) for i in range(2 * n)])
    a, b = real[:n], real[n:]
    recon = _roundtrip(tokenizer, b)

    def feats(images: np.ndarray) -> torch.Tensor:
        batches = torch.from_numpy(images).permute(0, 3, 1, 2).split(256)
        return M.extract(feature_net, batches)[0]

    fa = feats(a)
    report = M.compare_features(fa, feats(recon), extractor=str(feature_net.name), floor_real=feats(b),
                                n_boot=100, seed=seed)
    return report.to_dict()
