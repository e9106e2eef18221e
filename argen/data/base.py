"""Sample convention shared by every dataset in ``argen.data``.

Every dataset returns a plain dict per index, so the default collate works and the
training modules read one schema whatever the data:

* ``image``:    float tensor (3, H, W) in [-1, 1]
* ``label``:    int64 scalar tensor, the class id, or -1 when the data has no classes
* ``caption``:  str, the text prompt, or "" when the data has no captions
* ``metadata``: str, one GenEval-format JSON object (``tag``, ``include``, ``exclude``,
  ``prompt``), or "" when the data has none
* ``index``:    int64 scalar tensor, the dataset index (for reproducible logging)

A dataset that cannot read an item (a corrupt file) returns ``None`` for it;
:func:`collate_samples` drops such items and counts them in ``num_skipped`` so the
training module can report them at the end of the epoch instead of crashing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

Sample = dict[str, Any]


def make_sample(
    image: torch.Tensor,
    *,
    index: int,
    label: int = -1,
    caption: str = "",
    metadata: str = "",
) -> Sample:
    """Build one sample dict; ``image`` is (3, H, W) float in [-1, 1]."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    return {
        "image": image.float(),
        "label": torch.tensor(label, dtype=torch.long),
        "caption": caption,
        "metadata": metadata,
        "index": torch.tensor(index, dtype=torch.long),
    }


def uint8_to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [-1, 1]."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got {array.dtype} {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float() / 127.5 - 1.0


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) or (3, H, W) float in [-1, 1] -> (B, H, W, 3) / (H, W, 3) uint8 (round to nearest)."""
    x = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    x = x.movedim(-3, -1)
    return x.cpu().numpy()


def collate_samples(batch: list[Sample | None]) -> Sample:
    """Default collate over the readable samples; ``num_skipped`` counts the unreadable ones."""
    kept = [b for b in batch if b is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return {"num_skipped": skipped}
    out = default_collate(kept)
    out["num_skipped"] = skipped
    return out
