"""Feature extractors for distribution metrics (FD, KID, IS, precision/recall).

Every extractor is an ``nn.Module`` taking uint8 images (B, 3, H, W) in [0, 255] and
returning float features (B, num_features). ``name`` is written into every report, and a
metric computed on a domain network is never called plain "FID" (``fd_digits``,
``fd_shapes``). Extractors with a classifier head also implement ``class_logits`` (for IS and
class accuracy).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class FeatureExtractor(Protocol):
    name: str
    num_features: int

    def __call__(self, images: Tensor) -> Tensor: ...


@runtime_checkable
class ClassifierFeatures(FeatureExtractor, Protocol):
    num_classes: int

    def class_logits(self, images: Tensor) -> Tensor: ...
