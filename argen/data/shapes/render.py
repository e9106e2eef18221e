"""Anti-aliased rendering of shapes scenes (:func:`render_scene`)."""

from __future__ import annotations

import math

import numpy as np

from argen.data.shapes.world import (
    BACKGROUND_RGB,
    CROSS_ARM,
    PALETTE,
    Box,
    ObjectSpec,
    SceneSpec,
    check_image_size,
)


# --------------------------------------------------------------------------- rendering


def _inside(shape: str, xs: np.ndarray, ys: np.ndarray, box: Box) -> np.ndarray:
    """Bool mask of sample points (xs (1, W), ys (H, 1)) inside the shape with bbox ``box``."""
    x1, y1, x2, y2 = box
    cx, cy, half = (x1 + x2) / 2.0, (y1 + y2) / 2.0, (x2 - x1) / 2.0
    dx, dy = np.abs(xs - cx), np.abs(ys - cy)
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        return (dx <= half) & (dy <= half)
    if shape == "triangle":  # apex (cx, y1), base on y2: half-width grows linearly downwards
        return (ys >= y1) & (ys <= y2) & (dx <= half * (ys - y1) / (y2 - y1))
    if shape == "cross":
        arm = CROSS_ARM * half
        return ((dx <= half) & (dy <= arm)) | ((dx <= arm) & (dy <= half))
    raise ValueError(f"unknown shape {shape!r}")


def _coverage(shape: str, box: Box, image_size: int, supersample: int
              ) -> tuple[int, int, np.ndarray]:
    """(row0, col0, (h, w) coverage in [0, 1]) over the pixels touched by the bbox."""
    c0, r0 = max(int(math.floor(box[0])), 0), max(int(math.floor(box[1])), 0)
    c1, r1 = min(int(math.ceil(box[2])), image_size), min(int(math.ceil(box[3])), image_size)
    offsets = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(c0, c1)[:, None] + offsets).reshape(1, -1)
    ys = (np.arange(r0, r1)[:, None] + offsets).reshape(-1, 1)
    mask = _inside(shape, xs, ys, box).astype(np.float32)
    cov = mask.reshape(r1 - r0, supersample, c1 - c0, supersample).mean(axis=(1, 3))
    return r0, c0, cov


def render_scene(spec: SceneSpec, image_size: int | None = None, *, supersample: int = 4
                 ) -> tuple[np.ndarray, list[ObjectSpec]]:
    """Draw ``spec`` -> ((H, W, 3) uint8 RGB, objects with bboxes at ``image_size``).

    ``image_size`` defaults to the size the scene was laid out for; a larger size scales
    the layout (gaps grow with it). Objects never overlap, so each one is blended with the
    background independently: pixel = bg + coverage * (colour - bg).
    """
    size = spec.image_size if image_size is None else check_image_size(image_size)
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    factor = size / spec.image_size
    objects = [o.scaled(factor) if factor != 1 else o for o in spec.objects]
    background = np.asarray(BACKGROUND_RGB, dtype=np.float32)
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = background
    for obj in objects:
        r0, c0, cov = _coverage(obj.shape, obj.bbox, size, supersample)
        delta = np.asarray(PALETTE[obj.color], dtype=np.float32) - background
        canvas[r0:r0 + cov.shape[0], c0:c0 + cov.shape[1]] += cov[..., None] * delta
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, objects
