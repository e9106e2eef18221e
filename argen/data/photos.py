"""Random square crops of the sample photographs that ship inside scikit-image's wheel.

scikit-image installs about 15 real photographs under ``skimage/data/`` (astronaut,
camera, chelsea, coffee, rocket, retina, hubble_deep_field, ...). Crops of them make a
small "natural image patch" distribution that needs no network, for unconditional smoke
runs. The crops are strongly correlated (they come from a handful of photos), so this is
not a benchmark.

Held-out crops never overlap training pixels: every photo is cut along its longer side
into three disjoint strips, the first 70 % for ``train``, the next 15 % for ``val`` and
the last 15 % for ``test`` (:data:`SPLIT_BOUNDS`), and a crop of a split lies entirely
inside that split's strip. Splitting by photo instead would leave only two or three
photos per held-out split and a very different content mix from training.

Crop ``i`` of a split is a pure function of ``(seed, split, i)`` (and of which photos
loaded): photo chosen uniformly, side ``round(crop_size * s)`` with ``s`` uniform in
``scale_range`` (so crops cover several scales), position uniform in the strip; the
region is then resized down to ``crop_size`` with antialiased bilinear interpolation.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch.nn.functional as F
from torch.utils.data import Dataset

from argen.data.base import Sample, make_sample, uint8_to_tensor

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Fraction of each photo's longer side given to each split, as [start, end).
SPLIT_BOUNDS: dict[str, tuple[float, float]] = {
    "train": (0.0, 0.70),
    "val": (0.70, 0.85),
    "test": (0.85, 1.0),
}
_SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}

#: ``skimage.data`` loader name -> file that must be present in the installed wheel.
#: Only real photographs: synthetic images (logo, chessboard, color, phantom), the binary
#: ``horse`` silhouette and the tiny ``microaneurysms`` (102 px, too small for held-out
#: strips) are left out on purpose.
PHOTO_FILES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "cell": "cell.png",
    "chelsea": "chelsea.png",
    "clock": "clock_motion.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "moon": "moon.png",
    "page": "page.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
    "text": "text.png",
}


@dataclass(frozen=True)
class Photo:
    """A decoded photo: ``pixels`` is (H, W, 3) uint8."""

    name: str
    pixels: np.ndarray


@dataclass(frozen=True)
class CropBox:
    """Where a crop came from: rows ``[top, top + side)`` and cols ``[left, left + side)``."""

    photo: str
    top: int
    left: int
    side: int

    @property
    def bottom(self) -> int:
        return self.top + self.side

    @property
    def right(self) -> int:
        return self.left + self.side


def to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """Any skimage sample image -> (H, W, 3) uint8.

    Greyscale (H, W) or (H, W, 1) is replicated to 3 channels; RGBA is composited over
    white (so transparent areas do not become arbitrary colours); floats in [0, 1] are
    scaled to 0..255. Boolean masks and other layouts raise ``ValueError``.
    """
    if array.dtype == bool:
        raise ValueError("boolean (binary mask) images are not photographs")
    if np.issubdtype(array.dtype, np.floating):
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if array.dtype != np.uint8:
        raise ValueError(f"unsupported dtype {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"unsupported image shape {array.shape}")
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.shape[2] == 4:
        alpha = array[:, :, 3:].astype(np.float32) / 255.0
        rgb = array[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def _load_one(name: str, data_dir: str) -> Photo | None:
    """Decode one sample photo, or ``None`` (with a warning) if it is absent or unusable."""
    import skimage.data  # local: a heavy import only photo users pay for

    # Check the file is in the wheel *before* calling the loader: for a file missing from
    # the wheel, skimage tries a network download (or, under pytest, skips the test).
    path = os.path.join(data_dir, PHOTO_FILES[name])
    if not os.path.isfile(path):
        logger.warning("skimage sample photo %r not shipped at %s; skipped", name, path)
        return None
    try:
        pixels = to_rgb_uint8(np.asarray(getattr(skimage.data, name)()))
    except Exception as err:  # any loader/decoder failure only costs this one photo
        logger.warning("skimage sample photo %r could not be loaded (%s); skipped", name, err)
        return None
    return Photo(name=name, pixels=pixels)


@functools.lru_cache(maxsize=None)
def load_photos(names: tuple[str, ...] = tuple(PHOTO_FILES)) -> tuple[Photo, ...]:
    """Decode the sample photos once per process (cached); missing ones are skipped."""
    import skimage.data

    data_dir = os.path.dirname(os.path.abspath(skimage.data.__file__))
    photos = tuple(p for p in (_load_one(n, data_dir) for n in names) if p is not None)
    if not photos:
        raise RuntimeError(f"none of the skimage sample photos {names} could be loaded")
    return photos


def split_region(height: int, width: int, split: str) -> tuple[int, int, int, int]:
    """(top, left, height, width) of ``split``'s strip of an ``height`` x ``width`` photo.

    The cut runs along the longer side; integer boundaries are shared between
    neighbouring splits, so the three strips tile the photo without overlap.
    """
    start, end = SPLIT_BOUNDS[split]
    if width >= height:
        a, b = round(start * width), round(end * width)
        return 0, a, height, b - a
    a, b = round(start * height), round(end * height)
    return a, 0, b - a, width


class PhotosDataset(Dataset):
    """``size`` deterministic random crops of the scikit-image sample photos.

    Samples (see :mod:`argen.data.base`): ``image`` (3, crop_size, crop_size) float in
    [-1, 1], ``label`` -1 (unconditional), ``caption`` ``""``, ``metadata`` ``""``,
    ``index`` the crop index. :meth:`crop_box` tells where crop ``i`` came from.

    A crop is cut from a square region of side ``round(crop_size * s)``, ``s`` uniform in
    ``scale_range`` (``1 <= lo <= hi``), clamped to the strip, then resized down to
    ``crop_size``. Photos whose strip for this split is narrower than ``crop_size`` are
    not used for this split.
    """

    def __init__(
        self,
        *,
        split: str,
        size: int = 2048,
        crop_size: int = 32,
        scale_range: tuple[float, float] = (1.0, 2.0),
        seed: int = 0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if size < 1 or crop_size < 1:
            raise ValueError(f"size and crop_size must be >= 1, got {size}, {crop_size}")
        lo, hi = (float(v) for v in scale_range)
        if not 1.0 <= lo <= hi:
            raise ValueError(f"scale_range must satisfy 1 <= lo <= hi, got {scale_range}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.split, self.size, self.crop_size = split, size, crop_size
        self.scale_range, self.seed = (lo, hi), seed
        # (photo, strip) pairs usable for this split, in fixed order for determinism.
        self._sources: list[tuple[Photo, tuple[int, int, int, int]]] = []
        for photo in load_photos():
            strip = split_region(*photo.pixels.shape[:2], split)
            if min(strip[2], strip[3]) >= crop_size:
                self._sources.append((photo, strip))
        if not self._sources:
            raise ValueError(f"no sample photo has a {split} strip of at least {crop_size} px")
        self._pixels = {photo.name: photo.pixels for photo, _ in self._sources}

    @property
    def photo_names(self) -> tuple[str, ...]:
        """Names of the photos this split draws crops from."""
        return tuple(photo.name for photo, _ in self._sources)

    def __len__(self) -> int:
        return self.size

    def crop_box(self, index: int) -> CropBox:
        """The region crop ``index`` is cut from; a pure function of (seed, split, index)."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} crops")
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])
        photo, (s_top, s_left, s_h, s_w) = self._sources[int(rng.integers(len(self._sources)))]
        scale = rng.uniform(*self.scale_range)
        side = min(max(round(self.crop_size * scale), self.crop_size), s_h, s_w)
        top = s_top + int(rng.integers(s_h - side + 1))
        left = s_left + int(rng.integers(s_w - side + 1))
        return CropBox(photo=photo.name, top=top, left=left, side=side)

    def __getitem__(self, index: int) -> Sample:
        box = self.crop_box(index)
        pixels = self._pixels[box.photo]
        image = uint8_to_tensor(pixels[box.top : box.bottom, box.left : box.right])
        if box.side != self.crop_size:
            # Downscale only (side >= crop_size); antialias avoids aliasing on textures.
            image = F.interpolate(
                image[None],
                size=(self.crop_size, self.crop_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )[0].clamp(-1.0, 1.0)
        return make_sample(image, index=index)
