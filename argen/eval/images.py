"""Image sources for evaluation: a folder of PNGs or an ADM-style ``.npz`` sample batch.

Both stream uint8 batches (B, 3, H, W) in [0, 255] with bounded memory: a folder is read
file by file, an ``.npz`` member ``arr_0.npy`` is read from the zip in chunks (as the ADM
evaluator does) instead of being loaded whole.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npy_format
from PIL import Image

log = logging.getLogger(__name__)

LOSSY_SUFFIXES = {".jpg", ".jpeg", ".webp"}
IMAGE_SUFFIXES = {".png", ".bmp", ".tif", ".tiff"} | LOSSY_SUFFIXES


class ImageBatchError(ValueError):
    """An image batch file with the wrong key, dtype or shape."""


def _read_header(f: object) -> tuple[tuple[int, ...], bool, np.dtype]:
    major, _ = npy_format.read_magic(f)
    reader = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
    return reader(f)


def _npz_header(zf: zipfile.ZipFile, path: Path) -> tuple[zipfile.ZipInfo, tuple[int, ...], np.dtype]:
    if "arr_0.npy" not in zf.namelist():
        raise ImageBatchError(f"{path} has no 'arr_0' array (keys: {[n.removesuffix('.npy') for n in zf.namelist()]}); "
                              f"sample batches store uint8 images [N, H, W, 3] under arr_0")
    info = zf.getinfo("arr_0.npy")
    with zf.open(info) as f:
        shape, fortran, dtype = _read_header(f)
    if dtype != np.uint8:
        raise ImageBatchError(f"{path}: arr_0 has dtype {dtype}, expected uint8 in [0, 255] (quantise samples with "
                              f"clip, x255, round, then save)")
    if len(shape) != 4 or shape[3] != 3:
        raise ImageBatchError(f"{path}: arr_0 has shape {shape}, expected [N, H, W, 3] (NHWC RGB)")
    if fortran:
        raise ImageBatchError(f"{path}: arr_0 is Fortran-ordered; save it with np.savez from a C-ordered array")
    return info, shape, dtype


def npz_info(path: str | Path) -> tuple[int, int, int]:
    """(N, H, W) of an ``.npz`` sample batch, validating key, dtype and shape."""
    path = Path(path)
    with zipfile.ZipFile(path) as zf:
        _, shape, _ = _npz_header(zf, path)
    return shape[0], shape[1], shape[2]


def iter_npz(path: str | Path, batch_size: int = 250) -> Iterator[torch.Tensor]:
    """Stream ``arr_0`` of an ``.npz`` as uint8 tensors (B, 3, H, W)."""
    path = Path(path)
    with zipfile.ZipFile(path) as zf:
        info, shape, _ = _npz_header(zf, path)
        n, h, w, c = shape
        per_image = h * w * c
        with zf.open(info) as f:
            _read_header(f)  # skip to the data
            for start in range(0, n, batch_size):
                count = min(batch_size, n - start)
                buf = f.read(count * per_image)
                if len(buf) != count * per_image:
                    raise ImageBatchError(f"{path}: arr_0 is truncated at image {start}")
                arr = np.frombuffer(buf, dtype=np.uint8).reshape(count, h, w, c)
                yield torch.from_numpy(arr.copy()).permute(0, 3, 1, 2)


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder '{folder}' does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no images ({sorted(IMAGE_SUFFIXES)}) found under '{folder}'")
    lossy = sum(p.suffix.lower() in LOSSY_SUFFIXES for p in files)
    if lossy:
        log.warning("%d of %d images under %s are lossy (JPEG/WebP): compression moves FID; save samples as PNG",
                    lossy, len(files), folder)
    return files


def iter_folder(folder: str | Path, batch_size: int = 250, *,
                unreadable: list[Path] | None = None) -> Iterator[torch.Tensor]:
    """Stream a folder's images (sorted paths) as uint8 tensors (B, 3, H, W); sizes must agree.

    Unreadable files (zero bytes, truncated, not an image) are skipped as training's folder dataset
    skips them (:mod:`argen.data.folder`): the first is logged, and each is appended to ``unreadable``
    so the caller can count them in its report.
    """
    files = list_images(folder)
    skipped = [] if unreadable is None else unreadable
    before = len(skipped)
    size: tuple[int, int] | None = None
    for start in range(0, len(files), batch_size):
        arrays = []
        for p in files[start:start + batch_size]:
            arr = _read_rgb(p, skipped, first=len(skipped) == before)
            if arr is None:
                continue
            if size is None:
                size = arr.shape[:2]
            elif arr.shape[:2] != size:
                raise ValueError(f"{p} is {arr.shape[1]}x{arr.shape[0]} but earlier images are {size[1]}x{size[0]}; "
                                 f"evaluate one resolution at a time")
            arrays.append(arr)
        if arrays:
            yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    if size is None:
        raise ValueError(f"none of the {len(files)} images under '{folder}' could be read (first: {files[0]})")


def _read_rgb(path: Path, unreadable: list[Path], *, first: bool) -> np.ndarray | None:
    """(H, W, 3) uint8, or None (and ``path`` appended to ``unreadable``) for a file Pillow cannot decode."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        if first:
            log.warning("skipping unreadable image %s (%s: %s); every unreadable image is counted in the report",
                        path, type(err).__name__, err)
        unreadable.append(path)
        return None


def iter_images(source: str | Path, batch_size: int = 250, *,
                unreadable: list[Path] | None = None) -> Iterator[torch.Tensor]:
    """A folder of images or an ``.npz`` sample batch -> uint8 batches (B, 3, H, W); a folder's unreadable
    files are skipped and appended to ``unreadable`` (see :func:`iter_folder`)."""
    source = Path(source)
    if source.suffix == ".npz":
        if not source.is_file():
            raise FileNotFoundError(f"sample batch '{source}' does not exist")
        return iter_npz(source, batch_size)
    return iter_folder(source, batch_size, unreadable=unreadable)


def save_npz(images: np.ndarray, path: str | Path) -> Path:
    """Write uint8 [N, H, W, 3] images as an ADM sample batch (key ``arr_0``)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ImageBatchError(f"expected uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, arr_0=images)
    return path
