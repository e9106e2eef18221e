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

from argen.core.errors import MissingFileError


@runtime_checkable
class FeatureExtractor(Protocol):
    name: str
    num_features: int

    def __call__(self, images: Tensor) -> Tensor: ...


@runtime_checkable
class ClassifierFeatures(FeatureExtractor, Protocol):
    num_classes: int

    def class_logits(self, images: Tensor) -> Tensor: ...


INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


class InceptionFeatures:
    """The standard FID network: torch-fidelity's InceptionV3 port of the TF 2015-12-05 graph.

    torch-fidelity's ``FeatureExtractorInceptionV3`` (what torchmetrics' FID wraps), from a LOCAL weights file only
    (``weights-inception-2015-12-05-6726825d.pth``); inputs are uint8 and resized with the
    TF1-style bilinear resize (no antialiasing), which is what torch-fidelity and the ADM
    evaluator do (research/eval.md sec. 1.3-1.4). Returns 2048-d pool features;
    ``class_logits`` gives the 1008-way logits (bias-free, "logits_unbiased") for IS.
    """

    name = "inception_v3_tf2015"
    num_features = 2048
    num_classes = 1008

    def __init__(self, *, weights_path: str) -> None:
        from pathlib import Path

        import torch
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise MissingFileError(
                f"Inception weights not found at '{path}'. argen never downloads weights: copy torch-fidelity's "
                f"{INCEPTION_FILE} there, or point {{key}} at your copy, or evaluate with a domain extractor "
                f"(eval=fd_digits / eval=fd_shapes) instead", argument="weights_path", value=weights_path)
        # Refuse anything but a plain tensor dict: torch-fidelity itself unpickles with weights_only=False,
        # which is only safe once the safe unpickler has accepted the same file.
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "Conv2d_1a_3x3.conv.weight" not in state:
            raise ValueError(f"{path} is not torch-fidelity's InceptionV3 state dict ({INCEPTION_FILE})")
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=str(path))

    def to(self, device: object) -> InceptionFeatures:
        self.net.to(device)
        return self

    def _both(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.dtype.is_floating_point:
            raise TypeError("Inception features take uint8 images in [0, 255] (quantise with round, as saved PNGs)")
        feats, logits = self.net(images)
        return feats, logits

    def __call__(self, images: Tensor) -> Tensor:
        return self._both(images)[0]

    def class_logits(self, images: Tensor) -> Tensor:
        return self._both(images)[1]
