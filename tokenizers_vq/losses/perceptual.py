"""LPIPS perceptual distance (Zhang et al. 2018) loaded from local weight files only.

Two files are needed and neither is ever downloaded:
* ``backbone_path``: torchvision's VGG16 ImageNet weights (``vgg16-397923af.pth``; keys
  ``features.{i}.weight``), or a safetensors file with the same keys;
* ``head_path``: the LPIPS linear calibration layers (the ``lpips`` package's
  ``weights/v0.1/vgg.pth``; keys ``lin{k}.model.1.weight`` with shapes (1, C_k, 1, 1)).
Missing files raise FileNotFoundError naming the file and where to put it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# VGG16 ``features`` indices whose ReLU outputs LPIPS compares (relu1_2 ... relu5_3).
_TAPS = (3, 8, 15, 22, 29)
_CHANNELS = (64, 128, 256, 512, 512)
# ImageNet statistics expressed for inputs in [-1, 1], as LPIPS's ScalingLayer.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _load_state(path: str | Path, what: str) -> dict[str, Tensor]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"{what} weights not found at '{p}'. argen never downloads weights: copy the file there "
            f"(or point the config at it), or disable the perceptual loss with loss.perceptual_weight=0")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(p))
    state = torch.load(p, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            c_in = int(v)
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG distance; ``forward(x, y)`` -> (B,) for images in [-1, 1]."""

    def __init__(self, *, backbone_path: str, head_path: str) -> None:
        super().__init__()
        self.features = _vgg16_features()
        vgg = {k.removeprefix("features."): v for k, v in _load_state(backbone_path, "VGG16 backbone").items()
               if k.startswith("features.")}
        self.features.load_state_dict(vgg, strict=True)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        head = _load_state(head_path, "LPIPS head")
        for k, lin in enumerate(self.lins):
            key = f"lin{k}.model.1.weight"
            if key not in head:
                raise KeyError(f"LPIPS head file {head_path} has no key {key!r}; expected the lpips package's vgg.pth")
            lin.weight.data.copy_(head[key])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:  # always frozen, always eval
        return super().train(False)

    def _taps(self, x: Tensor) -> list[Tensor]:
        out = []
        h = (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS:
                out.append(h)
            if i == _TAPS[-1]:
                break
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        total = x.new_zeros(x.shape[0])
        for lin, fx, fy in zip(self.lins, self._taps(x), self._taps(y)):
            diff = (F.normalize(fx, dim=1, eps=1e-10) - F.normalize(fy, dim=1, eps=1e-10)) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total
