"""Domain feature networks for FD-digits and FD-shapes (``/work/shared/research/eval.md`` 3.2).

Two small CNNs trained offline on data we own, used as the feature extractors of
:mod:`argen.eval.features` (uint8 images (B, 3, H, W) in [0, 255] -> float (B, num_features)):

* :class:`DigitsFeatureNet` (``name = "digits_cnn"``): a 10-class digit classifier; its
  penultimate layer (d=64) gives the FD-digits features and ``class_logits`` the p(y|x) of
  IS / class accuracy.
* :class:`ShapesFeatureNet` (``name = "shapes_attr"``): a multi-head attribute network for the
  shapes world; its penultimate layer (d=128) gives the FD-shapes features. The heads are
  linear read-outs of those features, so everything they predict (which (shape, colour)
  pairs appear how often, how many objects, where) is linearly present in the features the
  distance is computed on.

Both resize any input size to a fixed ``input_size`` inside ``forward`` (bilinear,
``antialias=True``), so 16, 32 and 64 px generators are measured by the same network.
Numbers from these networks are not comparable to Inception FID (eval.md section 6).

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
from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.data.shapes.world import DEFAULT_COLORS, DEFAULT_SHAPES, ObjectSpec

log = logging.getLogger(__name__)

Targets = dict[str, Tensor]
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


def _conv_trunk(widths: Sequence[int], convs_per_stage: int) -> nn.Sequential:
    """Stages of ``convs_per_stage`` x (3x3 conv, BatchNorm, ReLU) then 2x2 max-pool.

    BatchNorm (not GroupNorm) because it trains these tiny nets fastest on one core; the
    exported nets run in eval mode, so features do not depend on the batch.
    """
    layers: list[nn.Module] = []
    in_ch = 3
    for width in widths:
        for _ in range(convs_per_stage):
            layers += [nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            in_ch = width
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _check_size(input_size: int, widths: Sequence[int]) -> int:
    factor = 2 ** len(widths)
    if input_size < factor or input_size % factor != 0:
        raise ValueError(f"input_size must be a positive multiple of {factor} (one 2x pool per "
                         f"stage of widths={list(widths)}), got {input_size}")
    return input_size // factor


class _FeatureNet(nn.Module):
    """Shared body: uint8 images -> trunk -> flatten -> Linear -> ReLU = features.

    The spatial map is flattened rather than averaged so that the features keep *where*
    things are (layouts and relations matter for shapes). Features are taken after the
    ReLU: that is exactly what the linear heads read.
    """

    name: str = "feature_net"

    def __init__(self, *, input_size: int, widths: Sequence[int], convs_per_stage: int,
                 num_features: int) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.widths = tuple(int(w) for w in widths)
        self.convs_per_stage = int(convs_per_stage)
        self.num_features = int(num_features)
        side = _check_size(self.input_size, self.widths)
        self.trunk = _conv_trunk(self.widths, self.convs_per_stage)
        self.fc = nn.Linear(self.widths[-1] * side * side, self.num_features)

    def forward(self, images: Tensor) -> Tensor:
        """uint8 (B, 3, H, W) -> float (B, num_features)."""
        x = self.trunk(prepare_images(images, self.input_size))
        return F.relu(self.fc(x.flatten(1)))

    def config(self) -> dict[str, Any]:
        """Constructor kwargs (YAML-safe) plus ``_target_``: the exported config node."""
        raise NotImplementedError

    def heads(self, images: Tensor) -> dict[str, Tensor]:
        """Raw head outputs for the training loss and metrics."""
        raise NotImplementedError

    def loss(self, outputs: dict[str, Tensor], targets: Targets) -> Tensor:
        raise NotImplementedError

    def metrics(self, outputs: dict[str, Tensor], targets: Targets) -> dict[str, float]:
        raise NotImplementedError


# --------------------------------------------------------------------------- digits


class DigitsFeatureNet(_FeatureNet):
    """Digit classifier whose penultimate layer is the FD-digits feature space.

    forward: uint8 (B, 3, H, W), any H, W (resized to ``input_size``) -> (B, num_features).
    class_logits: same input -> (B, 10). All three channels are read (not a grey average),
    so a colour tint in generated "greyscale" digits moves the features. The default d=64
    is small because the digits reference set is a few hundred images (a d x d covariance
    needs N >> d). One conv per stage: the digits are 8x8 scans upsampled, there is little
    fine detail to model.
    """

    name = "digits_cnn"
    num_classes = 10

    def __init__(self, *, input_size: int = 32, widths: Sequence[int] = (16, 32, 64),
                 convs_per_stage: int = 1, num_features: int = 64) -> None:
        super().__init__(input_size=input_size, widths=widths, convs_per_stage=convs_per_stage,
                         num_features=num_features)
        self.classifier = nn.Linear(self.num_features, self.num_classes)

    def config(self) -> dict[str, Any]:
        return {"_target_": f"{__name__}.DigitsFeatureNet", "input_size": self.input_size,
                "widths": list(self.widths), "convs_per_stage": self.convs_per_stage,
                "num_features": self.num_features}

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
    return {"class": torch.stack([torch.as_tensor(dataset[i]["label"]) for i in range(len(dataset))]).long()}


# --------------------------------------------------------------------------- shapes


class ShapesFeatureNet(_FeatureNet):
    """Multi-head attribute network of the shapes world; penultimate layer = FD-shapes space.

    forward: uint8 (B, 3, H, W) -> (B, num_features). Heads (all linear on the features):

    * ``pair_count`` (B, P, max_objects + 1): how many objects of each (shape, colour) pair,
      P = len(shapes) * len(colors) (18 by default), pair index = shape_idx * len(colors) +
      colour_idx. Counts per *pair* (not presence per shape and per colour) because binding
      colour to shape and counting are what a compositional generator gets wrong, and a
      count subsumes presence.
    * ``num_objects`` (B, max_objects + 1): the total, 0..max_objects. Redundant with the pair
      counts but a direct target for the one global quantity the counting task scores.
    * ``layout`` (B, grid * grid): multi-label occupancy of a coarse grid by bounding-box
      centres (GenEval's position rule uses box centres), so relations and placement are in
      the features too.

    There is no ``class_logits``: the scenes have no single label, so IS is undefined here.
    Two convs per stage (unlike digits): telling a 7 px circle from a square needs detail.
    """

    name = "shapes_attr"

    def __init__(self, *, input_size: int = 32, widths: Sequence[int] = (32, 64, 96),
                 convs_per_stage: int = 2, num_features: int = 128,
                 shapes: Sequence[str] = DEFAULT_SHAPES, colors: Sequence[str] = DEFAULT_COLORS,
                 max_objects: int = 4, grid: int = 4) -> None:
        super().__init__(input_size=input_size, widths=widths, convs_per_stage=convs_per_stage,
                         num_features=num_features)
        self.shapes, self.colors = tuple(shapes), tuple(colors)
        self.max_objects, self.grid = int(max_objects), int(grid)
        self.num_pairs = len(self.shapes) * len(self.colors)
        self.pair_head = nn.Linear(self.num_features, self.num_pairs * (self.max_objects + 1))
        self.count_head = nn.Linear(self.num_features, self.max_objects + 1)
        self.layout_head = nn.Linear(self.num_features, self.grid * self.grid)

    def config(self) -> dict[str, Any]:
        return {"_target_": f"{__name__}.ShapesFeatureNet", "input_size": self.input_size,
                "widths": list(self.widths), "convs_per_stage": self.convs_per_stage,
                "num_features": self.num_features, "shapes": list(self.shapes),
                "colors": list(self.colors), "max_objects": self.max_objects, "grid": self.grid}

    def heads(self, images: Tensor) -> dict[str, Tensor]:
        """uint8 images -> pair_count (B, P, K+1), num_objects (B, K+1), layout (B, G*G) logits."""
        f = self(images)
        pairs = self.pair_head(f).view(-1, self.num_pairs, self.max_objects + 1)
        return {"pair_count": pairs, "num_objects": self.count_head(f), "layout": self.layout_head(f)}

    def loss(self, outputs: dict[str, Tensor], targets: Targets) -> Tensor:
        """Unweighted sum of the three heads' mean losses (each is O(1) at initialisation)."""
        pair = F.cross_entropy(outputs["pair_count"].flatten(0, 1), targets["pair_count"].flatten())
        count = F.cross_entropy(outputs["num_objects"], targets["num_objects"])
        layout = F.binary_cross_entropy_with_logits(outputs["layout"], targets["layout"])
        return pair + count + layout

    def metrics(self, outputs: dict[str, Tensor], targets: Targets) -> dict[str, float]:
        """Per-head accuracies: per entry and exact (every entry of the image right)."""
        pair_ok = outputs["pair_count"].argmax(-1) == targets["pair_count"]
        layout_ok = (outputs["layout"] > 0) == (targets["layout"] > 0.5)
        present = targets["pair_count"] > 0
        return {
            "pair_count_accuracy": pair_ok.float().mean().item(),
            # recall on the pairs that are present: the per-entry accuracy is inflated by zeros
            "pair_count_accuracy_present": pair_ok[present].float().mean().item(),
            "pair_count_exact": pair_ok.all(1).float().mean().item(),
            "num_objects_accuracy": (outputs["num_objects"].argmax(1) == targets["num_objects"])
            .float().mean().item(),
            "layout_cell_accuracy": layout_ok.float().mean().item(),
            "layout_exact": layout_ok.all(1).float().mean().item(),
            "loss": self.loss(outputs, targets).item(),
        }

    def targets(self, objects: Sequence[ObjectSpec], image_size: int) -> Targets:
        """Ground-truth objects of one image -> pair_count (P,), num_objects (), layout (G*G,)."""
        return shapes_targets(objects, image_size, shapes=self.shapes, colors=self.colors,
                              max_objects=self.max_objects, grid=self.grid)


def shapes_targets(objects: Sequence[ObjectSpec], image_size: int, *, shapes: Sequence[str],
                   colors: Sequence[str], max_objects: int, grid: int) -> Targets:
    """Targets of one scene from its ground-truth objects (bboxes in pixels at ``image_size``).

    pair_count (P,) int64 with P = len(shapes) * len(colors), index shape_idx * len(colors) +
    colour_idx; num_objects () int64; layout (grid * grid,) float, 1 where a bbox centre
    falls in the cell (row-major, row = y). A centre on a cell edge goes to the lower/right
    cell; the last row/column is closed.
    """
    if len(objects) > max_objects:
        raise ValueError(f"scene has {len(objects)} objects > max_objects={max_objects}")
    pair_count = torch.zeros(len(shapes) * len(colors), dtype=torch.long)
    layout = torch.zeros(grid * grid)
    for obj in objects:
        pair_count[shapes.index(obj.shape) * len(colors) + colors.index(obj.color)] += 1
        cx, cy = obj.center
        col = min(max(int(math.floor(cx / image_size * grid)), 0), grid - 1)
        row = min(max(int(math.floor(cy / image_size * grid)), 0), grid - 1)
        layout[row * grid + col] = 1.0
    return {"pair_count": pair_count, "num_objects": torch.tensor(len(objects)), "layout": layout}


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


def _batches(n: int, batch_size: int, generator: torch.Generator):
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
    Returns the net's val metrics plus ``train_loss_first``/``train_loss_last`` (mean of the
    first/last 10 steps), ``train_seconds`` and ``steps``. The net is left in eval mode.
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
        if step % 100 == 0 or step == steps - 1:
            log.info("%s step %d/%d loss %.4f", net.name, step + 1, steps, losses[-1])
    seconds = time.perf_counter() - start
    net.eval()
    metrics = evaluate_feature_net(net, val_x, val_y)
    k = min(10, len(losses))
    metrics.update(train_loss_first=sum(losses[:k]) / k, train_loss_last=sum(losses[-k:]) / k,
                   train_seconds=seconds, steps=float(steps))
    return metrics


# --------------------------------------------------------------------------- build + export


DEFAULT_STEPS: dict[str, int] = {"digits": 600, "shapes": 1500}


def _build_digits(seed: int, steps: int, batch_size: int, lr: float) -> tuple[_FeatureNet, dict, dict]:
    """Train on the digits TRAIN split (32 px plus the 16 px rendition, so a 16 px generator's
    upsampled output is in-distribution); val for selection-free reporting, test reported."""
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
    settings = {"data": "shapes", "train_split": "train", "val_split": "val", **kwargs,
                "train_size": train_size, "val_size": val_size}
    return net, metrics, settings


def build_and_export(kind: Literal["digits", "shapes"], out_dir: str | Path, *,
                     steps: int | None = None, seed: int = 0, batch_size: int = 64,
                     lr: float = 3e-3, overwrite: bool = False, data_seed: int = 1000,
                     train_size: int = 20_000, val_size: int = 2_000, image_size: int = 32,
                     distractor_prob: float = 0.3) -> Path:
    """Train a ``kind`` feature net with the defaults and export it with ``save_pretrained``.

    ``data_seed``, ``train_size``, ``val_size``, ``image_size`` and ``distractor_prob`` apply
    to shapes only (digits uses its fixed train/val/test split). meta.json holds
    ``kind="feature_net"``, ``name``, the val (and digits test) metrics and the training
    settings. Returns the export folder, loadable with ``argen.load``.
    """
    from argen import __version__
    from tokenizers_vq.io import save_pretrained

    steps = DEFAULT_STEPS[kind] if steps is None else int(steps)
    if kind == "digits":
        net, metrics, settings = _build_digits(seed, steps, batch_size, lr)
    elif kind == "shapes":
        net, metrics, settings = _build_shapes(
            seed, steps, batch_size, lr, data_seed=data_seed, train_size=train_size,
            val_size=val_size, image_size=image_size, distractor_prob=distractor_prob)
    else:
        raise ValueError(f"kind must be 'digits' or 'shapes', got {kind!r}")
    meta = {"kind": "feature_net", "name": net.name, "num_features": net.num_features,
            "argen_version": __version__, "metrics": metrics,
            "training": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                         "optimizer": "AdamW", "schedule": "warmup+cosine", **settings}}
    return save_pretrained(net.eval(), out_dir, config=net.config(), meta=meta, overwrite=overwrite)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m argen.eval.feature_nets digits|shapes --out DIR [--steps N]``."""
    parser = argparse.ArgumentParser(prog="python -m argen.eval.feature_nets",
                                     description="Train and export an FD-digits / FD-shapes feature net.")
    parser.add_argument("kind", choices=["digits", "shapes"])
    parser.add_argument("--out", required=True, help="export folder (model.safetensors + config.yaml + meta.json)")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps (default {DEFAULT_STEPS})")
    parser.add_argument("--seed", type=int, default=0, help="init / data-order seed")
    parser.add_argument("--data-seed", type=int, default=1000,
                        help="shapes only: dataset seed, keep disjoint from the generator's")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    out = build_and_export(args.kind, args.out, steps=args.steps, seed=args.seed,
                           data_seed=args.data_seed, overwrite=args.overwrite)
    meta = json.loads((out / "meta.json").read_text())
    # sys.stdout rather than print: library modules are print-free (tests/unit/test_architecture.py)
    sys.stdout.write(json.dumps({"export": str(out), "metrics": meta["metrics"]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
