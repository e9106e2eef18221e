"""The shapes world at 64 and 128 px (Token-Shuffle's 16x16 / 32x32 token grids at f = 4).

Three things a 64 / 128 px run relies on, each checked against the 32 px world the rest was built at:

* the renderer scales objects with the image (a layout drawn at 2x / 4x block-averages to its 32 px render);
* the exact judge (ShapesEval) scores ground-truth renders of ``ShapesDataset(image_size=64 / 128)`` 1.0;
* the fd_shapes feature net resizes its input to ``input_size`` (32), so a larger render lands next to the
  same scene at 32 px in feature space, and the FD between two independent real sets (the floor) stays
  at the 32 px floor's scale. An untrained net (fixed init) is enough for that: without the resize its
  features of a 64 px image are about 2x, of a 128 px image about 10x, the spread between scenes away.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from argen.data.shapes import ShapesDataset, ShapesWorld, render_scene, sample_scene, scene_rng
from argen.eval.feature_nets import ShapesFeatureNet, dataset_images, init_parameters_
from argen.eval.fid import fd_features
from argen.eval.geneval import ScoringOptions, evaluate_image
from argen.eval.shapes_judge import ShapesJudge, match_detections

SIZES = (64, 128)


@pytest.mark.parametrize("size", SIZES)
def test_larger_render_block_averages_to_the_32px_render(size):
    # With supersample 1 the size px render samples the pixel centres (j + 0.5) / factor of the 32 px
    # grid, the very points of the 32 px render with supersample = factor (a power of two, so the
    # scaled comparisons are exact): block means equal the 32 px render up to its rounding.
    factor = size // 32
    world = ShapesWorld()
    for i in range(6):
        spec = sample_scene(scene_rng(0, "val", i), world)
        small, _ = render_scene(spec, supersample=factor)
        large, objects = render_scene(spec, size, supersample=1)
        assert large.shape == (size, size, 3) and large.dtype == np.uint8
        means = large.reshape(32, factor, 32, factor, 3).astype(np.float64).mean(axis=(1, 3))
        assert np.abs(means - small).max() <= 0.5 + 1e-9
        for obj, big in zip(spec.objects, objects):
            assert big.bbox == pytest.approx(tuple(v * factor for v in obj.bbox))


@pytest.fixture(scope="module", params=SIZES)
def dataset(request) -> ShapesDataset:
    return ShapesDataset(split="test", size=30, image_size=request.param, seed=3, distractor_prob=0.3)


def test_dataset_objects_scale_with_the_image(dataset):
    size, (lo, hi) = dataset.image_size, dataset.world.object_size
    for i in range(len(dataset)):
        image, objects, spec = dataset.render(i)
        assert image.shape == (size, size, 3) and spec.image_size == size
        for obj in objects:
            assert lo * size - 1e-6 <= obj.size <= hi * size + 1e-6
            assert min(obj.bbox) >= dataset.world.border - 1e-6
            assert max(obj.bbox) <= size - dataset.world.border + 1e-6
    assert dataset[0]["image"].shape == (3, size, size)


def test_judge_scores_ground_truth_renders_one(dataset):
    judge, options = ShapesJudge(), ScoringOptions()
    tags = set()
    for i in range(len(dataset)):
        image, objects, spec = dataset.render(i)
        detections = judge.detect(image)
        tags.add(spec.tag)
        assert evaluate_image(dict(spec.metadata), detections, options)[0], (i, spec.prompt, detections)
        assert sorted((d.label, d.color) for d in detections) == sorted((o.shape, o.color) for o in objects)
        assert all(d.score == 1.0 for d in detections)
        # every box fitted tightly (IoU >= 0.85), whatever the resolution
        assert len(match_detections(objects, detections, min_iou=0.85)) == len(objects)
    assert len(tags) >= 5  # the check covers (nearly) every GenEval task


@pytest.fixture(scope="module")
def features() -> dict[tuple[str, int], torch.Tensor]:
    """Features of an untrained (seeded) ShapesFeatureNet of 200 val and 200 test scenes at 32 / 64 / 128 px."""
    torch.manual_seed(0)
    net = init_parameters_(ShapesFeatureNet(), torch.Generator().manual_seed(0)).eval()
    out = {}
    with torch.no_grad():
        for split in ("val", "test"):
            for size in (32, *SIZES):
                images = dataset_images(ShapesDataset(split=split, size=200, image_size=size, seed=3))
                out[split, size] = net(images)
    return out


@pytest.mark.parametrize("size", SIZES)
def test_feature_net_sees_a_larger_render_as_the_same_scene(features, size):
    # Item i at 64 / 128 px is the same prompt as at 32 px with a layout drawn from the same stream:
    # near-identical scenes. Their features must be much closer than those of different scenes.
    base = features["val", 32]
    spread = (base[:-1] - base[1:]).norm(dim=1).mean()
    same_scene = (features["val", size] - base).norm(dim=1).mean()
    assert same_scene < 0.5 * spread, (size, float(same_scene / spread))


@pytest.mark.parametrize("size", SIZES)
def test_fd_floor_at_larger_sizes_matches_32px(features, size):
    floor_32 = fd_features(features["test", 32], features["val", 32])
    floor = fd_features(features["test", size], features["val", size])
    assert 0.5 * floor_32 < floor < 2.0 * floor_32, (size, floor, floor_32)
    # a 32 px reference for size px samples stays within the same scale too (the resize is faithful)
    assert fd_features(features["test", 32], features["val", size]) < 2.0 * floor_32
