"""Domain feature networks for FD-digits and FD-shapes (``/work/shared/research/eval.md`` 3.2).

Two small CNNs trained offline on data we own, used as the feature extractors of
:mod:`argen.eval.features` (uint8 images (B, 3, H, W) in [0, 255] -> float (B, num_features)):

* :class:`DigitsFeatureNet` (``name = "digits_cnn"``): a 10-class digit classifier; its
  penultimate layer (d=64) gives the FD-digits features and ``class_logits`` the p(y|x) of
  IS / class accuracy.
* :class:`ShapesFeatureNet` (``name = "shapes_attr"``): a multi-head attribute network for the
  shapes world; its penultimate layer (d=128) gives the FD-shapes features. Its main heads
  are linear read-outs of those features, so what they predict (how many objects of each
  (shape, colour) pair, how many in all, where) is linearly present in the features the
  distance is computed on.

Both resize any input size to a fixed ``input_size`` inside ``forward`` (bilinear,
``antialias=True``), so 16, 32 and 64 px generators are measured by the same network.
Both use BatchNorm: build them with ``argen.load`` (eval mode) or call ``.eval()`` before
extracting features. Numbers from these networks are not comparable to Inception FID
(eval.md section 6).

Training (:func:`train_feature_net`) is a plain AdamW + cosine loop with a local
``torch.Generator`` for initialisation, data order and augmentation; :func:`build_and_export`
trains one network and writes a ``save_pretrained`` folder that ``argen.load`` rebuilds.
CLI: ``python -m argen.eval.feature_nets digits|shapes --out DIR --steps N``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.core.errors import MissingFileError
from argen.data.shapes.world import DEFAULT_COLORS, DEFAULT_SHAPES, ObjectSpec

log = logging.getLogger(__name__)

Targets = dict[str, Tensor]
# The import path written into exported configs. Not ``__name__``: under
# ``python -m argen.eval.feature_nets`` that is "__main__", which argen.load refuses.
MODULE = "argen.eval.feature_nets"
TargetsFn = Callable[[Any], Targets]


# --------------------------------------------------------------------------- building blocks


def prepare_images(images: Tensor, input_size: int) -> Tensor:
    """uint8 (B, 3, H, W) in [0, 255] -> float (B, 3, input_size, input_size) in [-1, 1].

    Resizing is bilinear with ``antialias=True`` (``align_corners=False``): antialiasing
    matters when a 64 px image is reduced to 32 px, where plain bilinear would alias thin
    edges, and is a no-op for upsampling. Floats are refused rather than guessed at, since a
    [0, 1] vs [-1, 1] mix-up would silently shift every feature.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"feature nets take uint8 images in [0, 255], got {images.dtype}; "
                        "convert with ((x + 1) * 127.5).round().to(torch.uint8) for [-1, 1] floats")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    x = images.float() / 127.5 - 1.0
    if tuple(x.shape[-2:]) != (input_size, input_size):
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear",
                          align_corners=False, antialias=True)
    return x


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    # BatchNorm because it trains these tiny nets fastest; exported nets run in eval mode,
    # so a feature never depends on the rest of the batch.
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class _FeatureNet(nn.Module):
    """What the training loop needs from a feature net: ``heads`` (raw head outputs of a uint8
    batch), ``loss`` / ``metrics`` on those outputs and stacked targets, and ``config`` (the
    exported constructor node). ``forward`` returns the features."""

    name: str = "feature_net"
    num_features: int
    input_size: int

    def config(self) -> dict[str, Any]:
        """Constructor kwargs (YAML-safe lists) plus ``_target_``."""
        raise NotImplementedError

    def heads(self, images: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def loss(self, outputs: dict[str, Tensor], targets: Targets) -> Tensor:
        raise NotImplementedError

    def metrics(self, outputs: dict[str, Tensor], targets: Targets) -> dict[str, float]:
        raise NotImplementedError


# --------------------------------------------------------------------------- digits


class DigitsFeatureNet(_FeatureNet):
    """Digit classifier whose penultimate layer is the FD-digits feature space.

    forward: uint8 (B, 3, H, W), any H, W (resized to ``input_size``) -> (B, num_features).
    class_logits: same input -> (B, 10).

    Trunk: per entry of ``widths`` a 3x3 conv + BatchNorm + ReLU and a 2x2 max-pool (32 -> 4
    px with the default three stages), then the 4x4 map is flattened (position-aware, like
    LeNet's fc features) into ``Linear -> SiLU`` = the features, and a linear classifier.
    SiLU rather than ReLU so no feature is identically zero (dead units would waste
    dimensions of the FD). All three channels are read (not a grey average), so a colour
    tint in generated "greyscale" digits moves the features. d=64 is small because the
    digits reference set is a few hundred images (a d x d covariance needs N >> d).
    """

    name = "digits_cnn"
    num_classes = 10

    def __init__(self, *, input_size: int = 32, widths: Sequence[int] = (16, 32, 64),
                 num_features: int = 64) -> None:
        super().__init__()
        self.input_size, self.num_features = int(input_size), int(num_features)
        self.widths = tuple(int(w) for w in widths)
        factor = 2 ** len(self.widths)
        if self.input_size < factor or self.input_size % factor != 0:
            raise ValueError(f"input_size must be a positive multiple of {factor} (one 2x pool "
                             f"per entry of widths={list(self.widths)}), got {input_size}")
        layers: list[nn.Module] = []
        for c_in, c_out in zip((3,) + self.widths[:-1], self.widths):
            layers += [*_conv_bn_relu(c_in, c_out), nn.MaxPool2d(2)]
        self.trunk = nn.Sequential(*layers)
        side = self.input_size // factor
        self.fc = nn.Linear(self.widths[-1] * side * side, self.num_features)
        self.classifier = nn.Linear(self.num_features, self.num_classes)

    def forward(self, images: Tensor) -> Tensor:
        """uint8 (B, 3, H, W) -> float features (B, num_features)."""
        x = self.trunk(prepare_images(images, self.input_size))
        return F.silu(self.fc(x.flatten(1)))

    def config(self) -> dict[str, Any]:
        return {"_target_": f"{MODULE}.DigitsFeatureNet", "input_size": self.input_size,
                "widths": list(self.widths), "num_features": self.num_features}

    def class_logits(self, images: Tensor) -> Tensor:
        """uint8 (B, 3, H, W) -> (B, 10) unnormalised log-probabilities of the digit."""
        return self.classifier(self(images))

    def heads(self, images: Tensor) -> dict[str, Tensor]:
        return {"class": self.class_logits(images)}

    def loss(self, outputs: dict[str, Tensor], targets: Targets) -> Tensor:
        return F.cross_entropy(outputs["class"], targets["class"])

    def metrics(self, outputs: dict[str, Tensor], targets: Targets) -> dict[str, float]:
        correct = outputs["class"].argmax(1) == targets["class"]
        return {"accuracy": correct.float().mean().item(), "loss": self.loss(outputs, targets).item()}


def digits_targets(dataset: Any) -> Targets:
    """{"class": (N,) int64} from the ``label`` of every item (works on any labelled dataset)."""
    labels = [torch.as_tensor(dataset[i]["label"]) for i in range(len(dataset))]
    return {"class": torch.stack(labels).long()}


# --------------------------------------------------------------------------- shapes

# (width, stride) of each 3x3 conv: 32 -> 16 -> 8 px with a receptive field of 21 px, enough
# to see a whole object (7-11 px at 32 px) from one cell of the 8x8 map.
SHAPES_CONV_LAYERS: tuple[tuple[int, int], ...] = ((24, 1), (32, 2), (48, 1), (64, 2), (64, 1))


class ShapesFeatureNet(_FeatureNet):
    """Multi-head attribute network of the shapes world; penultimate layer = FD-shapes space.

    forward: uint8 (B, 3, H, W) -> (B, num_features). The trunk maps the image to a (C, M, M)
    grid (M = input_size / trunk stride = 8 at 32 px: 4 px cells, and in the default world
    two objects' centres are >= 9 px apart, so a cell holds at most one centre). Features = SiLU(Linear([sum of the map over
    cells / 16 (C), a 1x1-conv 8-channel map average-pooled to ``grid`` x ``grid``,
    flattened])). The sum makes counting additive over objects; the small pooled map keeps
    where they are. Heads (P = len(shapes) * len(colors) pairs, index shape_idx *
    len(colors) + colour_idx):

    * ``pair_count`` (B, P), linear on the features, *regressed* (MSE): how many objects of
      each (shape, colour) pair. Per pair (not presence per shape and per colour) because
      binding colour to shape and counting are what a compositional generator gets wrong.
      Regression rather than a softmax over 0..max_objects because it keeps counts linear in
      the features (an FD then moves with the count error) and, at equal compute, it read
      counts better (72% -> 86% scenes with every count right, before the centre map).
    * ``num_objects`` (B,), linear, regressed: the total count the counting task scores.
    * ``layout`` (B, grid * grid), linear, logits (BCE): which coarse cells hold a bbox centre
      (GenEval's position rule uses box centres), so placement is in the features.
    * ``center_map`` (B, P + 1, M, M), a 1x1 conv on the trunk map, not on the features: in
      each cell, the pair whose bbox centre is there, or background (index P). It trains
      the map to fire once per object (a CenterNet-like detector), which is what the summed
      features need to count. In our runs it raised scene-exact pair counts from 86% to
      88% (1500 steps) and from 50% to 65% (1000 steps).

    There is no ``class_logits``: scenes have no single label, so IS is undefined here.
    """

    name = "shapes_attr"

    def __init__(self, *, input_size: int = 32,
                 conv_layers: Sequence[Sequence[int]] = SHAPES_CONV_LAYERS,
                 num_features: int = 128, layout_channels: int = 8,
                 shapes: Sequence[str] = DEFAULT_SHAPES, colors: Sequence[str] = DEFAULT_COLORS,
                 max_objects: int = 4, grid: int = 4) -> None:
        super().__init__()
        self.input_size, self.num_features = int(input_size), int(num_features)
        self.conv_layers = tuple((int(w), int(s)) for w, s in conv_layers)
        self.layout_channels, self.grid = int(layout_channels), int(grid)
        self.shapes, self.colors, self.max_objects = tuple(shapes), tuple(colors), int(max_objects)
        self.num_pairs = len(self.shapes) * len(self.colors)
        self.map_size = self._check_sizes()
        layers, c_in = [], 3
        for width, stride in self.conv_layers:
            layers += _conv_bn_relu(c_in, width, stride)
            c_in = width
        self.trunk = nn.Sequential(*layers)
        self.layout_conv = nn.Conv2d(c_in, self.layout_channels, 1)
        self.fc = nn.Linear(c_in + self.layout_channels * self.grid ** 2, self.num_features)
        self.center_head = nn.Conv2d(c_in, self.num_pairs + 1, 1)
        self.pair_head = nn.Linear(self.num_features, self.num_pairs)
        self.count_head = nn.Linear(self.num_features, 1)
        self.layout_head = nn.Linear(self.num_features, self.grid ** 2)

    def _check_sizes(self) -> int:
        stride = math.prod(s for _, s in self.conv_layers)
        if self.input_size % stride or (self.input_size // stride) % self.grid:
            raise ValueError(f"input_size {self.input_size} must be divisible by the trunk stride "
                             f"{stride} times grid {self.grid}")
        return self.input_size // stride

    def _encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 images -> (trunk map (B, C, M, M), features (B, num_features))."""
        x = self.trunk(prepare_images(images, self.input_size))
        # / 16: keeps the summed activations O(1) at the default 8x8 map
        summed = x.sum(dim=(2, 3)) / 16.0
        layout = F.adaptive_avg_pool2d(self.layout_conv(x), self.grid).flatten(1)
        return x, F.silu(self.fc(torch.cat([summed, layout], dim=1)))

    def forward(self, images: Tensor) -> Tensor:
        """uint8 (B, 3, H, W) -> float features (B, num_features)."""
        return self._encode(images)[1]

    def config(self) -> dict[str, Any]:
        return {"_target_": f"{MODULE}.ShapesFeatureNet", "input_size": self.input_size,
                "conv_layers": [list(layer) for layer in self.conv_layers],
                "num_features": self.num_features, "layout_channels": self.layout_channels,
                "shapes": list(self.shapes), "colors": list(self.colors),
                "max_objects": self.max_objects, "grid": self.grid}

    def heads(self, images: Tensor) -> dict[str, Tensor]:
        """uint8 images -> pair_count (B, P), num_objects (B,), layout (B, G*G) logits,
        center_map (B, P + 1, M, M) logits."""
        x, f = self._encode(images)
        return {"pair_count": self.pair_head(f), "num_objects": self.count_head(f)[:, 0],
                "layout": self.layout_head(f), "center_map": self.center_head(x)}

    def loss(self, outputs: dict[str, Tensor], targets: Targets) -> Tensor:
        """4 MSE(pair counts) + MSE(total) + 4 BCE(layout) + CE(centre map).

        The x4 weights balance heads whose per-entry losses are small because most entries
        are 0 (18 pairs, 16 cells); without the layout weight the layout head lagged."""
        pair = F.mse_loss(outputs["pair_count"], targets["pair_count"].float())
        total = F.mse_loss(outputs["num_objects"], targets["num_objects"].float())
        layout = F.binary_cross_entropy_with_logits(outputs["layout"], targets["layout"])
        center = F.cross_entropy(outputs["center_map"], targets["center_map"])
        return 4.0 * pair + total + 4.0 * layout + center

    def metrics(self, outputs: dict[str, Tensor], targets: Targets) -> dict[str, float]:
        """Per-head accuracies (counts rounded): per entry, and exact (all entries of an image)."""
        pair_ok = outputs["pair_count"].round() == targets["pair_count"]
        layout_ok = (outputs["layout"] > 0) == (targets["layout"] > 0.5)
        center_pred = outputs["center_map"].argmax(1)
        on_object = targets["center_map"] < self.num_pairs
        return {
            "pair_count_accuracy": _mean(pair_ok),
            # the per-entry accuracy is inflated by the many absent pairs
            "pair_count_accuracy_present": _mean(pair_ok[targets["pair_count"] > 0]),
            "pair_count_exact": _mean(pair_ok.all(1)),
            "num_objects_accuracy": _mean(outputs["num_objects"].round() == targets["num_objects"]),
            "layout_cell_accuracy": _mean(layout_ok),
            "layout_exact": _mean(layout_ok.all(1)),
            "center_map_object_accuracy": _mean(center_pred[on_object] == targets["center_map"][on_object]),
            "center_map_exact": _mean((center_pred == targets["center_map"]).flatten(1).all(1)),
            "loss": self.loss(outputs, targets).item(),
        }

    def targets(self, objects: Sequence[ObjectSpec], image_size: int) -> Targets:
        """Ground-truth objects of one image -> targets of every head (see :func:`shapes_targets`)."""
        return shapes_targets(objects, image_size, shapes=self.shapes, colors=self.colors,
                              max_objects=self.max_objects, grid=self.grid, map_size=self.map_size)


def _mean(values: Tensor) -> float:
    """Mean of a bool / numeric tensor as a float (nan for an empty one)."""
    return values.float().mean().item()


def _cell(value: float, image_size: int, cells: int) -> int:
    """Index of the cell of ``cells`` equal cells over [0, image_size) holding ``value``."""
    return min(max(int(math.floor(value / image_size * cells)), 0), cells - 1)


def shapes_targets(objects: Sequence[ObjectSpec], image_size: int, *, shapes: Sequence[str],
                   colors: Sequence[str], max_objects: int, grid: int, map_size: int) -> Targets:
    """Targets of one scene from its ground-truth objects (bboxes in pixels at ``image_size``).

    pair_count (P,) int64, P = len(shapes) * len(colors), index shape_idx * len(colors) +
    colour_idx; num_objects () int64; layout (grid * grid,) float32, 1 where a bbox centre
    falls in the cell (row-major, row = y); center_map (map_size, map_size) int64, the pair
    index of the object centred in the cell, P (background) elsewhere. A centre on a cell
    edge goes to the lower/right cell. Objects sharing a centre cell (impossible in the
    default world at map_size = image_size / 4) keep the last one.
    """
    if len(objects) > max_objects:
        raise ValueError(f"scene has {len(objects)} objects > max_objects={max_objects}")
    num_pairs = len(shapes) * len(colors)
    pair_count = torch.zeros(num_pairs, dtype=torch.long)
    layout = torch.zeros(grid * grid)
    center_map = torch.full((map_size, map_size), num_pairs, dtype=torch.long)
    for obj in objects:
        pair = shapes.index(obj.shape) * len(colors) + colors.index(obj.color)
        pair_count[pair] += 1
        cx, cy = obj.center
        layout[_cell(cy, image_size, grid) * grid + _cell(cx, image_size, grid)] = 1.0
        center_map[_cell(cy, image_size, map_size), _cell(cx, image_size, map_size)] = pair
    return {"pair_count": pair_count, "num_objects": torch.tensor(len(objects)),
            "layout": layout, "center_map": center_map}


def shapes_dataset_targets(dataset: Any, net: ShapesFeatureNet) -> Targets:
    """Stacked :func:`shapes_targets` of every scene of a ``ShapesDataset`` (from ``scene(i)``:
    the ground truth, since metadata alone leaves free colours and positions unnamed)."""
    rows = []
    for i in range(len(dataset)):
        spec = dataset.scene(i)
        rows.append(net.targets(spec.objects, spec.image_size))
    return {key: torch.stack([r[key] for r in rows]) for key in rows[0]}


# --------------------------------------------------------------------------- training


def _to_uint8(images: Tensor) -> Tensor:
    return ((images.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def dataset_images(dataset: Any) -> Tensor:
    """Every item's ``image`` (3, H, W) in [-1, 1] -> uint8 (N, 3, S, S), rounded like a
    sampler's output, so the nets train on exactly the input type they are evaluated on.

    Items of mixed sizes (a ConcatDataset of 16 and 32 px digits) are brought to the largest
    size S with the same resize as ``forward`` (:func:`prepare_images`), then re-quantised.
    """
    items = [_to_uint8(dataset[i]["image"]) for i in range(len(dataset))]
    size = max(max(x.shape[-2:]) for x in items)
    items = [x if tuple(x.shape[-2:]) == (size, size) else _to_uint8(prepare_images(x[None], size)[0])
             for x in items]
    return torch.stack(items)


def init_parameters_(net: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise conv / linear weights from ``generator`` (Kaiming-normal, zero bias), so a
    training run is reproducible without touching the global RNG."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by integers in [-max_shift, max_shift] (edge-replicate padding)."""
    if max_shift <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images.float(), (max_shift,) * 4, mode="replicate").to(images.dtype)
    offsets = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])


@torch.no_grad()
def evaluate_feature_net(net: _FeatureNet, images: Tensor, targets: Targets, *,
                         batch_size: int = 256) -> dict[str, float]:
    """Head metrics of ``net`` (eval mode) on uint8 images (N, 3, H, W) and stacked targets."""
    was_training = net.training
    net.eval()
    chunks = [net.heads(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    outputs = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
    net.train(was_training)
    return net.metrics(outputs, targets)


def _cosine_lambda(steps: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless stream of index batches: reshuffled epochs, last partial batch dropped."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def train_feature_net(net: _FeatureNet, train_dataset: Any, val_dataset: Any, *, steps: int,
                      batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                      targets_fn: TargetsFn, weight_decay: float = 1e-4, max_shift: int = 0,
                      warmup: int | None = None) -> dict[str, float]:
    """Train ``net`` in place with AdamW and a warmup + cosine schedule; return val metrics.

    Datasets yield dicts with ``image`` (3, H, W) in [-1, 1]; they are materialised once as
    uint8 (the nets' input type) and ``targets_fn(dataset)`` gives the stacked targets
    (e.g. :func:`digits_targets`). Data order and the ``max_shift`` augmentation draw from a
    local generator seeded with ``seed``: with the same initial weights, a run is repeatable.
    Returns the net's metrics on ``val_dataset`` prefixed ``val_``, plus ``train_loss_first`` /
    ``train_loss_last`` (mean of the first / last 10 steps), ``train_seconds`` (the loop
    only, without materialising the data) and ``steps``. The net is left in eval mode.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = dataset_images(train_dataset), targets_fn(train_dataset)
    val_x, val_y = dataset_images(val_dataset), targets_fn(val_dataset)
    batch_size = min(batch_size, len(train_x))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20) if warmup is None else max(1, warmup)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine_lambda(steps, warmup))
    losses: list[float] = []
    log_every = max(1, steps // 10)
    start = time.perf_counter()
    net.train()
    for step, idx in zip(range(steps), _batches(len(train_x), batch_size, generator)):
        images = random_shift(train_x[idx], max_shift, generator)
        loss = net.loss(net.heads(images), {k: v[idx] for k, v in train_y.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps - 1:
            log.info("%s step %d/%d loss %.4f", net.name, step + 1, steps, losses[-1])
    seconds = time.perf_counter() - start
    net.eval()
    metrics = {f"val_{k}": v for k, v in evaluate_feature_net(net, val_x, val_y).items()}
    k = min(10, len(losses))
    metrics.update(train_loss_first=sum(losses[:k]) / k, train_loss_last=sum(losses[-k:]) / k,
                   train_seconds=seconds, steps=float(steps))
    return metrics


# --------------------------------------------------------------------------- build + export


# Chosen on one CPU core: ~30 s (digits) and ~90 s (shapes) of training. Shapes prefers many
# small batches: at equal compute, batch 16 x 4000 steps beat 32 x 2000 and 64 x 1000
# (scene-exact pair counts 89% vs 84% vs 65%).
DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"steps": 600, "batch_size": 64, "lr": 3e-3},
    "shapes": {"steps": 4000, "batch_size": 16, "lr": 2e-3},
}


def _build_digits(seed: int, steps: int, batch_size: int, lr: float) -> tuple[_FeatureNet, dict, dict]:
    """Train on the digits TRAIN split (32 px plus the 16 px rendition, so a 16 px generator's
    upsampled output is in-distribution); reports val and test (at 32 and 16 px) accuracy."""
    from torch.utils.data import ConcatDataset

    from argen.data.digits import DigitsDataset

    net = init_parameters_(DigitsFeatureNet(), torch.Generator().manual_seed(seed))
    train = ConcatDataset([DigitsDataset(split="train", image_size=s) for s in (32, 16)])
    val = DigitsDataset(split="val", image_size=32)
    metrics = train_feature_net(net, train, val, steps=steps, batch_size=batch_size, lr=lr,
                                seed=seed, targets_fn=digits_targets, max_shift=2)
    for size in (32, 16):
        test = DigitsDataset(split="test", image_size=size)
        test_metrics = evaluate_feature_net(net, dataset_images(test), digits_targets(test))
        metrics[f"test_accuracy_{size}px"] = test_metrics["accuracy"]
        metrics[f"test_loss_{size}px"] = test_metrics["loss"]
    settings = {"data": "digits", "train_split": "train", "train_image_sizes": [32, 16],
                "data_seed": 0, "max_shift": 2}
    return net, metrics, settings


def _build_shapes(seed: int, steps: int, batch_size: int, lr: float, *, data_seed: int,
                  train_size: int, val_size: int, image_size: int,
                  distractor_prob: float) -> tuple[_FeatureNet, dict, dict]:
    """Train on shapes scenes of ``data_seed`` (keep it disjoint from generators' seeds).

    Distractors are on so the net also sees mixed-shape 3-4 object scenes, which the
    prompt-only scenes never contain (counting scenes repeat one shape)."""
    from argen.data.shapes import ShapesDataset

    net = init_parameters_(ShapesFeatureNet(), torch.Generator().manual_seed(seed))
    kwargs = {"image_size": image_size, "seed": data_seed, "distractor_prob": distractor_prob}
    train = ShapesDataset(split="train", size=train_size, **kwargs)
    val = ShapesDataset(split="val", size=val_size, **kwargs)
    metrics = train_feature_net(net, train, val, steps=steps, batch_size=batch_size, lr=lr,
                                seed=seed, targets_fn=lambda d: shapes_dataset_targets(d, net))
    settings = {"data": "shapes", "train_split": "train", "val_split": "val",
                "data_seed": data_seed, "image_size": image_size,
                "distractor_prob": distractor_prob, "train_size": train_size, "val_size": val_size}
    return net, metrics, settings


def build_and_export(kind: Literal["digits", "shapes"], out_dir: str | Path, *,
                     steps: int | None = None, seed: int = 0, batch_size: int | None = None,
                     lr: float | None = None, overwrite: bool = False, data_seed: int = 1000,
                     train_size: int | None = None, val_size: int = 2_000, image_size: int = 32,
                     distractor_prob: float = 0.3) -> Path:
    """Train a ``kind`` feature net and export it with ``save_pretrained``.

    ``steps``, ``batch_size`` and ``lr`` default to :data:`DEFAULTS` of the kind. The net is
    initialised from ``torch.Generator().manual_seed(seed)``, so a run is repeatable.

    ``data_seed``, ``train_size``, ``val_size``, ``image_size`` and ``distractor_prob`` apply
    to shapes only (digits uses its fixed train/val/test split). ``train_size`` defaults to
    the scenes the run will see, steps x batch_size, capped at 20k (rendering costs ~1 ms a
    scene, and item i is the same scene whatever the size, so a short run uses a prefix). meta.json holds
    ``kind="feature_net"``, ``name``, the val (and digits test) metrics and the training
    settings. Returns the export folder, loadable with ``argen.load``.
    """
    from argen._version import __version__
    from tokenizers_vq.io import save_pretrained

    if kind not in DEFAULTS:
        raise ValueError(f"kind must be 'digits' or 'shapes', got {kind!r}")
    steps = int(DEFAULTS[kind]["steps"] if steps is None else steps)
    batch_size = int(DEFAULTS[kind]["batch_size"] if batch_size is None else batch_size)
    lr = float(DEFAULTS[kind]["lr"] if lr is None else lr)
    train_size = min(20_000, steps * batch_size) if train_size is None else int(train_size)
    start = time.perf_counter()
    if kind == "digits":
        net, metrics, settings = _build_digits(seed, steps, batch_size, lr)
    elif kind == "shapes":
        net, metrics, settings = _build_shapes(
            seed, steps, batch_size, lr, data_seed=data_seed, train_size=train_size,
            val_size=val_size, image_size=image_size, distractor_prob=distractor_prob)
    metrics["total_seconds"] = time.perf_counter() - start
    meta = {"kind": "feature_net", "name": net.name, "num_features": net.num_features,
            "argen_version": __version__, "metrics": metrics,
            "training": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                         "optimizer": "AdamW", "schedule": "warmup+cosine", **settings}}
    return save_pretrained(net.eval(), out_dir, config=net.config(), meta=meta, overwrite=overwrite)


def load_feature_net(*, kind: Literal["digits", "shapes"], path: str) -> nn.Module:
    """The ``kind`` feature net exported in ``path`` (the extractor of eval=fd_digits / fd_shapes), in eval mode.

    A missing folder is a :class:`~argen.core.errors.MissingFileError` that gives the command which makes it."""
    from tokenizers_vq.io import WEIGHTS_NAME, load_pretrained

    folder = Path(path).expanduser()
    if not (folder / WEIGHTS_NAME).is_file():
        raise MissingFileError(
            f"no {kind} feature net in '{folder}': make it with `python -m argen.eval.feature_nets {kind} "
            f"--out {folder}`, or point {{key}} at one made before", argument="path", value=path)
    return load_pretrained(folder)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m argen.eval.feature_nets digits|shapes --out DIR [--steps N]``."""
    parser = argparse.ArgumentParser(prog="python -m argen.eval.feature_nets",
                                     description="Train and export an FD-digits / FD-shapes feature net.")
    parser.add_argument("kind", choices=["digits", "shapes"])
    parser.add_argument("--out", required=True,
                        help="export folder (model.safetensors + config.yaml + meta.json)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: per kind)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: per kind")
    parser.add_argument("--lr", type=float, default=None, help="peak AdamW lr (default: per kind)")
    parser.add_argument("--seed", type=int, default=0, help="init / data-order seed")
    parser.add_argument("--data-seed", type=int, default=1000,
                        help="shapes only: dataset seed, keep disjoint from the generator's")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    out = build_and_export(args.kind, args.out, steps=args.steps, seed=args.seed,
                           batch_size=args.batch_size, lr=args.lr, data_seed=args.data_seed,
                           overwrite=args.overwrite)
    meta = json.loads((out / "meta.json").read_text())
    # sys.stdout rather than print: library modules are print-free (tests/unit/test_architecture.py)
    sys.stdout.write(json.dumps({"export": str(out), "metrics": meta["metrics"]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
