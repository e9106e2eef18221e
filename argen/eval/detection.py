"""The detector protocol GenEval-style scoring runs on.

A detector turns one image into a list of :class:`Detection`. GenEval's official detector
(Mask2Former + CLIP colour classification) runs outside this process; the shapes judge
(``argen.eval.shapes_judge``) runs here. The scorer (``argen.eval.geneval``) only sees
detections, so both are scored by exactly the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """One detected object.

    label: class name ("circle", "teddy bear"); score: confidence in [0, 1];
    box: (x1, y1, x2, y2) in pixels, y pointing down; color: the object's colour name when
    the detector classifies colour (GenEval's CLIP step; the shapes judge's segment colour),
    None when it does not.
    """

    label: str
    score: float
    box: Box
    color: str | None = None


@runtime_checkable
class Detector(Protocol):
    """``detect(image)``: (H, W, 3) uint8 RGB -> detections of every class in the image."""

    name: str

    def detect(self, image: np.ndarray) -> list[Detection]: ...
