"""Handwritten digits from scikit-learn's ``load_digits`` (real data that ships in the wheel).

``load_digits()`` reads ``sklearn/datasets/data/digits.csv.gz``: 1797 greyscale 8x8 scans
of handwritten digits (a UCI optdigits subset), integer intensities 0..16, 10 classes of
174..183 images each. It never touches the network, so it is the one labelled, real data
set every test and smoke run can rely on.

Each sample follows :mod:`argen.data.base`: the 8x8 image is upsampled to 16x16 or 32x32,
replicated to three channels and mapped to [-1, 1]; ``label`` is the digit and ``caption``
is ``"a handwritten digit <k>"``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from argen.data.base import Sample, make_sample

SPLITS = ("train", "val", "test")
ALLOWED_IMAGE_SIZES = (16, 32)
NUM_CLASSES = 10
CLASS_NAMES: tuple[str, ...] = tuple(str(k) for k in range(NUM_CLASSES))
_MAX_VALUE = 16.0  # load_digits intensities are integers 0..16


def split_indices(
    labels: np.ndarray, *, seed: int, val_fraction: float, test_fraction: float
) -> dict[str, np.ndarray]:
    """Stratified, seed-determined partition of ``range(len(labels))`` into train/val/test.

    ``val_fraction`` and ``test_fraction`` are fractions of the whole set. The test set is
    cut first, then val from the rest, both stratified by class so every split keeps the
    class balance. Returns sorted int64 index arrays that are pairwise disjoint and cover
    every index.
    """
    if not (0.0 < test_fraction < 1.0 and 0.0 < val_fraction < 1.0):
        raise ValueError(
            f"val_fraction and test_fraction must be in (0, 1), got {val_fraction}, {test_fraction}"
        )
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}"
        )
    all_idx = np.arange(len(labels))
    rest, test = train_test_split(
        all_idx, test_size=test_fraction, random_state=seed, stratify=labels
    )
    # val_fraction is relative to the whole set, so rescale it to the remainder.
    val_of_rest = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(
        rest, test_size=val_of_rest, random_state=seed, stratify=labels[rest]
    )
    return {name: np.sort(part).astype(np.int64) for name, part in zip(SPLITS, (train, val, test))}


def upsample_digits(images: np.ndarray, image_size: int) -> torch.Tensor:
    """(N, 8, 8) intensities 0..16 -> (N, 3, image_size, image_size) float in [-1, 1].

    Bilinear (``align_corners=False``) with ``antialias=True``: for an upsample the
    antialias flag changes nothing, it is set so the call stays correct if someone asks
    for a smaller size. Bilinear rather than nearest because nearest would turn each scan
    pixel into a hard 2x2 / 4x4 block, a pixel-art look no real digit has; bilinear output
    is a convex mix of input pixels, so it stays inside [-1, 1] (the clamp only guards
    rounding).
    """
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None]  # (N, 1, 8, 8)
    x = x / _MAX_VALUE * 2.0 - 1.0
    x = F.interpolate(
        x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
    )
    return x.clamp(-1.0, 1.0).expand(-1, 3, -1, -1).contiguous()


class DigitsDataset(Dataset):
    """One split of scikit-learn's 1797 handwritten digits, upsampled to 16x16 or 32x32.

    Samples (see :mod:`argen.data.base`): ``image`` (3, S, S) float in [-1, 1] with the three
    channels equal (greyscale), ``label`` int64 in 0..9, ``caption`` ``"a handwritten digit
    <k>"``, ``metadata`` ``""``, ``index`` the position in this split.

    With the defaults the splits hold 1257 / 180 / 360 images (train / val / test). The
    whole split is decoded and resized once in the constructor (at most 1797 x 3 x 32 x 32
    floats, about 22 MB), so ``__getitem__`` is a slice.
    """

    num_classes: int = NUM_CLASSES
    class_names: tuple[str, ...] = CLASS_NAMES

    def __init__(
        self,
        *,
        split: str,
        image_size: int = 16,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if image_size not in ALLOWED_IMAGE_SIZES:
            raise ValueError(
                f"image_size must be one of {ALLOWED_IMAGE_SIZES} (the 8x8 digits are only "
                f"upsampled by 2x or 4x), got {image_size!r}"
            )
        self.split = split
        self.image_size = image_size
        self.seed = seed
        bunch = load_digits()
        labels = np.asarray(bunch.target, dtype=np.int64)
        parts = split_indices(
            labels, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction
        )
        #: Indices into ``load_digits()`` of the images in this split (sorted).
        self.source_indices: np.ndarray = parts[split]
        self.labels: torch.Tensor = torch.from_numpy(labels[self.source_indices])
        self.images: torch.Tensor = upsample_digits(bunch.images[self.source_indices], image_size)

    def __len__(self) -> int:
        return int(self.source_indices.shape[0])

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = index % len(self)
        label = int(self.labels[index])
        return make_sample(
            self.images[index].clone(),
            index=index,
            label=label,
            caption=f"a handwritten digit {label}",
        )
