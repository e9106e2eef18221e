"""Images from a folder on disk: an ImageFolder tree (class subfolders) or a flat folder.

Layout, decided by :func:`list_images` / ``labels``:

* ImageFolder: every image lies under a top-level subfolder of ``root``; the sorted names
  of the subfolders that hold images are the classes, ``label`` is the class id (images
  nested deeper belong to their top-level folder's class).
* Flat: images anywhere under ``root`` (recursively) with ``label`` -1.

Each image is decoded with Pillow, converted to RGB (:func:`to_rgb`) and brought to
``image_size`` x ``image_size`` with ADM's centre-crop resize (:func:`center_crop_arr`),
the preprocessing the guided-diffusion reference batches were made with, so FID against
those statistics compares like with like.

Unreadable files (zero bytes, truncated PNG/JPEG, a non-image with an image extension)
never crash a run: ``__getitem__`` returns ``None`` for them, which
:func:`argen.data.base.collate_samples` drops and counts in ``num_skipped``; each bad file
is logged once per process and counted in :attr:`ImageFolderDataset.num_unreadable`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from argen.data.base import Sample, make_sample, uint8_to_tensor

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when the file name ends with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def list_images(root: Path) -> list[Path]:
    """All image files under ``root``, recursively, sorted; hidden files/folders skipped."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune hidden folders (.git, .ipynb_checkpoints) in place so walk skips them.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            Path(dirpath) / f for f in filenames if not f.startswith(".") and is_image_file(f)
        )
    return sorted(found)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> ``RGB``.

    16/32-bit greyscale (``I;16*``, ``I``) is scaled by 1/257 rather than clipped (Pillow's
    own ``convert`` clips everything above 255 to white); ``F`` is clipped to 0..255.
    Images with transparency (RGBA, LA, P/L with a transparent index) are composited
    over white so transparent pixels do not take whatever colour the encoder left.
    CMYK, YCbCr, 1, L and the rest go through Pillow's ``convert("RGB")``.
    """
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        wide = np.asarray(image).astype(np.float64)
        grey = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        grey = np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


def center_crop_arr(image: Image.Image, image_size: int) -> np.ndarray:
    """ADM centre-crop resize: RGB Pillow image -> (image_size, image_size, 3) uint8.

    While the short side is at least twice the target, halve the image with a BOX filter
    (cheap, alias-free downsampling by exact factors of 2); then resize with BICUBIC so the
    short side equals ``image_size``; then cut the centred square.
    """
    while min(image.size) >= 2 * image_size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.Resampling.BOX)
    scale = image_size / min(image.size)
    new_size = tuple(max(image_size, round(s * scale)) for s in image.size)
    image = image.resize(new_size, resample=Image.Resampling.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    # Copy: np.asarray of a Pillow image is read-only, which torch.from_numpy warns about.
    return np.array(arr[top : top + image_size, left : left + image_size])


def read_captions(captions_file: Path, root: Path) -> dict[str, str]:
    """``{"file": path relative to root, "caption": str}`` JSON lines -> {posix path: caption}."""
    captions: dict[str, str] = {}
    with open(captions_file, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                rel, caption = entry["file"], entry["caption"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{captions_file}:{line_no}: expected a JSON object with 'file' and "
                    f"'caption' ({err})"
                ) from err
            if not isinstance(rel, str) or not isinstance(caption, str):
                raise ValueError(f"{captions_file}:{line_no}: 'file' and 'caption' must be strings")
            captions[Path(rel).as_posix()] = caption
    if not captions:
        raise ValueError(f"captions file {captions_file} holds no entries (root {root})")
    return captions


def _find_classes(root: Path, files: list[Path], labels: bool | None) -> list[str] | None:
    """Class names (sorted top-level folders holding images), or ``None`` for a flat folder."""
    top_levels = [f.relative_to(root).parts for f in files]
    at_root = any(len(parts) == 1 for parts in top_levels)
    if labels is None:
        labels = not at_root
    if not labels:
        return None
    if at_root:
        raise ValueError(
            f"labels=True needs every image inside a class subfolder, but {root} holds "
            "images directly"
        )
    return sorted({parts[0] for parts in top_levels})


class ImageFolderDataset(Dataset):
    """Images under ``root`` at ``image_size`` x ``image_size`` (ADM centre-crop resize).

    Samples (see :mod:`argen.data.base`): ``image`` (3, image_size, image_size) float in
    [-1, 1], ``label`` the class id (ImageFolder layout) or -1 (flat), ``caption`` from
    ``captions_file`` or ``""``, ``metadata`` ``""``, ``index``. ``None`` for an
    unreadable file.

    Args:
        root: folder to scan recursively for :data:`IMAGE_EXTENSIONS`.
        image_size: output side in pixels.
        captions_file: optional JSON-lines file of ``{"file": <path relative to root>,
            "caption": <str>}``; images without an entry get ``""``.
        labels: ``None`` detects the layout (ImageFolder when no image sits directly in
            ``root``), ``True`` requires class subfolders, ``False`` forces label -1.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        image_size: int,
        captions_file: str | os.PathLike[str] | None = None,
        labels: bool | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"image folder {self.root} is not a directory")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.image_size = image_size
        self.files: list[Path] = list_images(self.root)
        if not self.files:
            raise ValueError(
                f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {self.root}"
            )
        classes = _find_classes(self.root, self.files, labels)
        #: Sorted class names, empty for a flat folder.
        self.class_names: tuple[str, ...] = tuple(classes or ())
        index_of = {name: i for i, name in enumerate(self.class_names)}
        rel = [f.relative_to(self.root) for f in self.files]
        self.labels: list[int] = [index_of[r.parts[0]] if classes else -1 for r in rel]
        captions = read_captions(Path(captions_file), self.root) if captions_file else {}
        self.captions: list[str] = [captions.get(r.as_posix(), "") for r in rel]
        #: Unreadable items met by this process (each DataLoader worker has its own copy).
        self.num_unreadable = 0
        self._warned: set[Path] = set()

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for a flat folder)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, path: Path) -> np.ndarray:
        """Decode ``path`` -> (image_size, image_size, 3) uint8; raises on a bad file."""
        with Image.open(path) as image:
            image.load()  # decode now so truncation errors surface inside the caller's try
            return center_crop_arr(to_rgb(image), self.image_size)

    def __getitem__(self, index: int) -> Sample | None:
        path = self.files[index]
        try:
            pixels = self.load_image(path)
        except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ...
            self.num_unreadable += 1
            if path not in self._warned:
                self._warned.add(path)
                logger.warning("skipping unreadable image %s: %s: %s", path, type(err).__name__, err)
            return None
        return make_sample(
            uint8_to_tensor(pixels),
            index=index,
            label=self.labels[index],
            caption=self.captions[index],
        )
