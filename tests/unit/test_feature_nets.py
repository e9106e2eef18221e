"""Domain feature nets (argen.eval.feature_nets): shapes of outputs, protocols, a few training
steps, export round trip and the shapes targets. Nothing here trains to convergence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import Subset

import argen
from argen.data.digits import DigitsDataset
from argen.data.shapes import ShapesDataset
from argen.data.shapes.world import ObjectSpec
from argen.eval.feature_nets import (
    MODULE,
    DigitsFeatureNet,
    ShapesFeatureNet,
    build_and_export,
    dataset_images,
    digits_targets,
    evaluate_feature_net,
    init_parameters_,
    shapes_dataset_targets,
    shapes_targets,
    train_feature_net,
)
from argen.eval.features import ClassifierFeatures, FeatureExtractor
from tests.conftest import cli_env


def uint8_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_digits_features_and_logits(size: int) -> None:
    net = DigitsFeatureNet().eval()
    x = uint8_images(3, size)
    with torch.no_grad():
        f, logits = net(x), net.class_logits(x)
    assert net.num_features == 64 and net.num_classes == 10 and net.name == "digits_cnn"
    assert f.shape == (3, 64) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert logits.shape == (3, 10) and logits.dtype == torch.float32


@pytest.mark.parametrize("size", [16, 32, 64])
def test_shapes_features_and_heads(size: int) -> None:
    net = ShapesFeatureNet().eval()
    x = uint8_images(2, size)
    with torch.no_grad():
        f, heads = net(x), net.heads(x)
    assert net.num_features == 128 and net.name == "shapes_attr"
    assert f.shape == (2, 128) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert heads["pair_count"].shape == (2, 18) and heads["num_objects"].shape == (2,)
    assert heads["layout"].shape == (2, 16) and heads["center_map"].shape == (2, 19, 8, 8)


def test_protocols_and_input_checks() -> None:
    digits, shapes = DigitsFeatureNet(), ShapesFeatureNet()
    assert isinstance(digits, FeatureExtractor) and isinstance(digits, ClassifierFeatures)
    assert isinstance(shapes, FeatureExtractor) and not isinstance(shapes, ClassifierFeatures)
    with pytest.raises(TypeError, match="uint8"):
        digits(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        shapes(torch.zeros(1, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="multiple of 8"):
        DigitsFeatureNet(input_size=20)


def test_features_do_not_depend_on_the_batch() -> None:
    net = init_parameters_(ShapesFeatureNet(), torch.Generator().manual_seed(0)).eval()
    x = uint8_images(4, 32)
    with torch.no_grad():
        assert torch.allclose(net(x)[:1], net(x[:1]), atol=1e-5)


def test_digits_training_steps_reduce_loss() -> None:
    data = Subset(DigitsDataset(split="train", image_size=16), range(64))
    net = init_parameters_(DigitsFeatureNet(), torch.Generator().manual_seed(0))
    before = evaluate_feature_net(net, dataset_images(data), digits_targets(data))
    metrics = train_feature_net(net, data, data, steps=15, batch_size=32, lr=3e-3, seed=0,
                                targets_fn=digits_targets, max_shift=1)
    assert metrics["val_loss"] < 0.7 * before["loss"]
    assert {"val_accuracy", "train_loss_first", "train_loss_last", "train_seconds"} <= set(metrics)
    assert not net.training


def test_shapes_training_steps_reduce_loss() -> None:
    data = ShapesDataset(split="train", size=48, seed=1000)
    net = init_parameters_(ShapesFeatureNet(), torch.Generator().manual_seed(0))

    def targets_fn(d: ShapesDataset) -> dict[str, torch.Tensor]:
        return shapes_dataset_targets(d, net)

    before = evaluate_feature_net(net, dataset_images(data), targets_fn(data))
    metrics = train_feature_net(net, data, data, steps=15, batch_size=16, lr=2e-3, seed=0,
                                targets_fn=targets_fn)
    assert metrics["val_loss"] < 0.7 * before["loss"]
    for key in ("pair_count_exact", "num_objects_accuracy", "layout_cell_accuracy",
                "center_map_object_accuracy"):
        assert 0.0 <= metrics[f"val_{key}"] <= 1.0


def test_training_is_repeatable() -> None:
    data = Subset(DigitsDataset(split="train", image_size=16), range(32))
    states = []
    for _ in range(2):
        net = init_parameters_(DigitsFeatureNet(), torch.Generator().manual_seed(3))
        train_feature_net(net, data, data, steps=3, batch_size=8, lr=1e-3, seed=5,
                          targets_fn=digits_targets, max_shift=2)
        states.append(net.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("kind", ["digits", "shapes"])
def test_export_roundtrip_with_argen_load(kind: str, tmp_path: Path) -> None:
    out = build_and_export(kind, tmp_path / kind, steps=2, seed=0, train_size=32, val_size=16)  # type: ignore[arg-type]
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "meta.json", "model.safetensors"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "feature_net" and meta["training"]["steps"] == 2
    loaded = argen.load(out)
    cls = DigitsFeatureNet if kind == "digits" else ShapesFeatureNet
    assert type(loaded) is cls and meta["name"] == cls.name and not loaded.training
    # the exported weights are the trained ones: rebuild from the file a second time
    again = argen.load(out)
    x = uint8_images(5, 32, seed=1)
    with torch.no_grad():
        assert torch.equal(loaded(x), again(x))
    if kind == "shapes":
        assert meta["training"]["seed"] == 0 and meta["training"]["data_seed"] == 1000
        assert "val_pair_count_exact" in meta["metrics"]
    else:
        assert "test_accuracy_32px" in meta["metrics"]


def test_export_keeps_the_trained_features(tmp_path: Path) -> None:
    data = Subset(DigitsDataset(split="train", image_size=16), range(16))
    net = init_parameters_(DigitsFeatureNet(num_features=16), torch.Generator().manual_seed(0))
    train_feature_net(net, data, data, steps=2, batch_size=8, seed=0, targets_fn=digits_targets)
    from tokenizers_vq.io import save_pretrained

    out = save_pretrained(net, tmp_path / "d", config=net.config(), meta={"kind": "feature_net"})
    loaded = argen.load(out)
    x = uint8_images(4, 16)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), loaded(x))
        assert torch.equal(net.class_logits(x), loaded.class_logits(x))
    assert loaded.num_features == 16


def test_cli_module_writes_a_loadable_export(tmp_path: Path) -> None:
    # a subprocess, so the classes live in __main__: the config must still name argen.eval...
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "argen.eval.feature_nets", "digits", "--out", str(out),
                           "--steps", "2"], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert Path(report["export"]) == out and "val_accuracy" in report["metrics"]
    assert yaml.safe_load((out / "config.yaml").read_text())["_target_"] == MODULE + ".DigitsFeatureNet"
    assert isinstance(argen.load(out), DigitsFeatureNet)


def test_shapes_targets_hand_checked() -> None:
    # circle=0, square=1, triangle=2; red=0, orange=1, yellow=2, green=3, blue=4, purple=5
    objects = [
        ObjectSpec("circle", "red", (2.0, 2.0, 10.0, 10.0)),  # centre (6, 6)
        ObjectSpec("triangle", "blue", (20.0, 4.0, 29.0, 13.0)),  # centre (24.5, 8.5)
        ObjectSpec("triangle", "blue", (4.0, 20.0, 12.0, 28.0)),  # centre (8, 24): on a grid edge
    ]
    net = ShapesFeatureNet()
    t = net.targets(objects, 32)
    expected_pairs = torch.zeros(18, dtype=torch.long)
    expected_pairs[0 * 6 + 0] = 1
    expected_pairs[2 * 6 + 4] = 2
    assert torch.equal(t["pair_count"], expected_pairs)
    assert int(t["num_objects"]) == 3
    # 4x4 grid of 8 px cells: (row 0, col 0), (row 1, col 3), (row 3, col 1: x=8 -> right cell)
    assert t["layout"].nonzero().flatten().tolist() == [0, 7, 13]
    # 8x8 map of 4 px cells, background = 18
    cm = t["center_map"]
    assert cm.shape == (8, 8) and int((cm != 18).sum()) == 3
    assert int(cm[1, 1]) == 0 and int(cm[2, 6]) == 16 and int(cm[6, 2]) == 16
    # scaled world: the same layout at 64 px gives the same targets
    t64 = shapes_targets([o.scaled(2.0) for o in objects], 64, shapes=net.shapes, colors=net.colors,
                         max_objects=4, grid=4, map_size=8)
    assert all(torch.equal(t[k], t64[k]) for k in t)
    with pytest.raises(ValueError, match="max_objects"):
        net.targets(objects * 2, 32)


def test_shapes_targets_agree_with_metadata() -> None:
    """Without distractors the prompt names every object: counts per clause must match."""
    data = ShapesDataset(split="val", size=40, seed=7)
    net = ShapesFeatureNet()
    targets = shapes_dataset_targets(data, net)
    pairs = targets["pair_count"].view(-1, 3, 6)
    for i in range(len(data)):
        metadata = json.loads(data[i]["metadata"])
        shape_index = {s: k for k, s in enumerate(net.shapes)}
        total = 0
        for clause in metadata["include"]:
            s = shape_index[clause["class"]]
            if "color" in clause:
                c = net.colors.index(clause["color"])
                assert int(pairs[i, s, c]) == clause["count"], metadata
            assert int(pairs[i, s].sum()) == clause["count"], metadata
            total += clause["count"]
        assert int(targets["num_objects"][i]) == total == int(pairs[i].sum())
        assert int((targets["center_map"][i] != 18).sum()) == total
