"""Unit tests for the in-wheel datasets (digits, photos) and the image-folder loader."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from argen.data.base import collate_samples
from argen.data.digits import DigitsDataset, split_indices
from argen.data.folder import ImageFolderDataset, center_crop_arr, to_rgb
from argen.data.photos import SPLITS, PhotosDataset, split_region, to_rgb_uint8

# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digit_splits() -> dict[str, DigitsDataset]:
    return {s: DigitsDataset(split=s, image_size=16, seed=0) for s in SPLITS}


def test_digits_split_sizes_and_disjoint(digit_splits: dict[str, DigitsDataset]) -> None:
    sizes = {s: len(d) for s, d in digit_splits.items()}
    assert sizes == {"train": 1257, "val": 180, "test": 360}
    parts = [set(d.source_indices.tolist()) for d in digit_splits.values()]
    assert set.union(*parts) == set(range(1797))
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_digits_stratified(digit_splits: dict[str, DigitsDataset]) -> None:
    from sklearn.datasets import load_digits

    totals = np.bincount(load_digits().target, minlength=10)  # 174..183 per class
    for split, ds in digit_splits.items():
        counts = np.bincount(ds.labels.numpy(), minlength=10)
        expected = totals * len(ds) / totals.sum()
        # Stratification keeps every class within rounding of its share of the split.
        assert np.all(np.abs(counts - expected) <= 1.0), (split, counts, expected)


@pytest.mark.parametrize("size", [16, 32])
def test_digits_shapes_ranges_labels(size: int) -> None:
    ds = DigitsDataset(split="val", image_size=size)
    assert ds.images.shape == (len(ds), 3, size, size)
    assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0
    # Background is exactly -1 (value 0) and strokes reach near +1.
    assert ds.images.min() == -1.0 and ds.images.max() > 0.8
    sample = ds[0]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, size, size)
    assert torch.equal(sample["image"][0], sample["image"][2])  # greyscale replicated
    assert sample["label"].dtype == torch.int64 and 0 <= int(sample["label"]) < 10
    assert sample["caption"] == f"a handwritten digit {int(sample['label'])}"
    assert sample["metadata"] == "" and int(sample["index"]) == 0
    assert set(ds.labels.tolist()) == set(range(10))
    assert ds.num_classes == 10 and ds.class_names[3] == "3"


def test_digits_determinism_and_seed() -> None:
    a = DigitsDataset(split="train", seed=3)
    b = DigitsDataset(split="train", seed=3)
    c = DigitsDataset(split="train", seed=4)
    assert np.array_equal(a.source_indices, b.source_indices)
    assert torch.equal(a.images, b.images)
    assert not np.array_equal(a.source_indices, c.source_indices)


def test_digits_bad_args() -> None:
    with pytest.raises(ValueError, match="image_size"):
        DigitsDataset(split="train", image_size=28)
    with pytest.raises(ValueError, match="split"):
        DigitsDataset(split="training")
    with pytest.raises(ValueError):
        split_indices(np.zeros(10), seed=0, val_fraction=0.5, test_fraction=0.5)


# ----------------------------------------------------------------------------- photos


def test_photos_shape_range_and_convention() -> None:
    ds = PhotosDataset(split="train", size=64, crop_size=32)
    assert len(ds) == 64 and len(ds.photo_names) >= 10
    batch = collate_samples([ds[i] for i in range(16)])
    assert batch["image"].shape == (16, 3, 32, 32)
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert torch.all(batch["label"] == -1) and batch["num_skipped"] == 0
    assert batch["image"].std() > 0.05  # real content, not a constant fill


def test_photos_deterministic_per_seed_split_index() -> None:
    a = PhotosDataset(split="val", size=32, seed=7)
    b = PhotosDataset(split="val", size=32, seed=7)
    for i in (0, 5, 31):
        assert a.crop_box(i) == b.crop_box(i)
        assert torch.equal(a[i]["image"], b[i]["image"])
    # Index order does not matter: crop i is a pure function of (seed, split, i).
    assert torch.equal(a[5]["image"], PhotosDataset(split="val", size=32, seed=7)[5]["image"])
    other_seed = PhotosDataset(split="val", size=32, seed=8)
    other_split = PhotosDataset(split="test", size=32, seed=7)
    boxes = [a.crop_box(i) for i in range(32)]
    assert boxes != [other_seed.crop_box(i) for i in range(32)]
    assert boxes != [other_split.crop_box(i) for i in range(32)]


def _box_mask(shape: tuple[int, int], boxes: list) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for box in boxes:
        mask[box.top : box.bottom, box.left : box.right] = True
    return mask


def test_photos_splits_use_disjoint_regions() -> None:
    from argen.data.photos import load_photos

    shapes = {p.name: p.pixels.shape[:2] for p in load_photos()}
    crops = {s: PhotosDataset(split=s, size=600, scale_range=(1.0, 3.0)) for s in SPLITS}
    boxes = {s: [d.crop_box(i) for i in range(len(d))] for s, d in crops.items()}
    for name, shape in shapes.items():
        masks = {s: _box_mask(shape, [b for b in boxes[s] if b.photo == name]) for s in SPLITS}
        assert not (masks["train"] & masks["val"]).any(), name
        assert not (masks["train"] & masks["test"]).any(), name
        assert not (masks["val"] & masks["test"]).any(), name
    for split, split_boxes in boxes.items():
        for box in split_boxes:
            top, left, h, w = split_region(*shapes[box.photo], split)
            assert top <= box.top and box.bottom <= top + h
            assert left <= box.left and box.right <= left + w
            assert 32 <= box.side <= 96


def test_photos_strips_tile_photo() -> None:
    for h, w in [(300, 451), (660, 550), (512, 512)]:
        area = sum(r[2] * r[3] for r in (split_region(h, w, s) for s in SPLITS))
        assert area == h * w


def test_photos_to_rgb_uint8() -> None:
    grey = np.full((4, 5), 7, dtype=np.uint8)
    assert to_rgb_uint8(grey).shape == (4, 5, 3)
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)  # fully transparent black -> white
    assert np.all(to_rgb_uint8(rgba) == 255)
    with pytest.raises(ValueError):
        to_rgb_uint8(np.zeros((4, 4), dtype=bool))


def test_photos_bad_args() -> None:
    with pytest.raises(ValueError):
        PhotosDataset(split="train", scale_range=(0.5, 2.0))
    with pytest.raises(ValueError):
        PhotosDataset(split="holdout")


# ----------------------------------------------------------------------------- folder


def _write_images(root: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "cat").mkdir(parents=True)
    (root / "dog" / "nested").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)).save(root / "cat" / "a.png")
    Image.fromarray(rng.integers(0, 256, (90, 50), dtype=np.uint8), "L").save(root / "cat" / "b.JPG")
    rgba = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "dog" / "c.png")
    Image.fromarray(rng.integers(0, 256, (33, 48, 3), dtype=np.uint8)).convert("P").save(
        root / "dog" / "nested" / "d.gif"
    )
    wide = (rng.integers(0, 65536, (20, 30))).astype(np.uint16)
    Image.fromarray(wide).save(root / "dog" / "e16.png")  # I;16
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).convert("CMYK").save(
        root / "dog" / "f.jpg"
    )
    # Corrupt: a PNG cut in half, and an empty file with an image extension.
    good = root / "cat" / "a.png"
    (root / "cat" / "truncated.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "notes.txt").write_text("not an image")  # ignored by extension


def test_folder_labels_and_sizes(tmp_path: Path) -> None:
    _write_images(tmp_path)
    ds = ImageFolderDataset(tmp_path, image_size=24)
    assert ds.class_names == ("cat", "dog") and ds.num_classes == 2
    assert len(ds) == 8
    by_name = {f.name: lab for f, lab in zip(ds.files, ds.labels)}
    assert by_name["a.png"] == 0 and by_name["b.JPG"] == 0 and by_name["d.gif"] == 1
    readable = [s for s in (ds[i] for i in range(len(ds))) if s is not None]
    assert len(readable) == 6 and ds.num_unreadable == 2
    for s in readable:
        assert s["image"].shape == (3, 24, 24)
        assert s["image"].min() >= -1.0 and s["image"].max() <= 1.0
        assert s["caption"] == "" and int(s["label"]) in (0, 1)


def test_folder_dataloader_counts_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write_images(tmp_path)
    ds = ImageFolderDataset(tmp_path, image_size=16)
    loader = DataLoader(ds, batch_size=3, num_workers=0, collate_fn=collate_samples)
    with caplog.at_level(logging.WARNING, logger="argen.data.folder"):
        batches = list(loader)
        list(loader)  # a second epoch must not warn again for the same files
    assert sum(b["num_skipped"] for b in batches) == 2
    assert sum(len(b["image"]) for b in batches if "image" in b) == 6
    warned = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warned) == 2


def test_center_crop_arr_adm() -> None:
    image = Image.fromarray(np.zeros((300, 1000, 3), dtype=np.uint8))
    assert center_crop_arr(image, 64).shape == (64, 64, 3)
    assert center_crop_arr(Image.new("RGB", (17, 9)), 32).shape == (32, 32, 3)  # upscale
    # A centred square marker survives in the centre of the crop.
    arr = np.zeros((100, 300, 3), dtype=np.uint8)
    arr[40:60, 140:160] = 255
    out = center_crop_arr(Image.fromarray(arr), 50)
    assert out[25, 25].min() > 200 and out[0, 0].max() < 30


def test_to_rgb_modes() -> None:
    wide = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert np.all(np.asarray(to_rgb(wide)) == 255)
    half = Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16))
    assert np.all(np.asarray(to_rgb(half)) == 128)  # scaled, not clipped to 255
    clear = Image.new("RGBA", (3, 3), (0, 0, 0, 0))
    assert np.all(np.asarray(to_rgb(clear)) == 255)
    for mode in ("L", "P", "CMYK", "1"):
        assert to_rgb(Image.new(mode, (3, 3))).mode == "RGB"


def test_folder_flat_and_captions(tmp_path: Path) -> None:
    for i in range(3):
        Image.new("RGB", (20 + i, 30), (i * 50, 0, 0)).save(tmp_path / f"img{i}.png")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "sub" / "x.png")
    captions = tmp_path / "captions.jsonl"
    captions.write_text(
        "\n".join(json.dumps({"file": f, "caption": f"cap {f}"}) for f in ("img1.png", "sub/x.png"))
    )
    ds = ImageFolderDataset(tmp_path, image_size=8, captions_file=captions)
    assert ds.class_names == () and len(ds) == 4
    samples = [ds[i] for i in range(len(ds))]
    assert all(int(s["label"]) == -1 for s in samples)
    assert sorted(s["caption"] for s in samples) == ["", "", "cap img1.png", "cap sub/x.png"]
    with pytest.raises(ValueError, match="class subfolder"):
        ImageFolderDataset(tmp_path, image_size=8, labels=True)


def test_folder_missing_or_empty_root(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageFolderDataset(missing, image_size=8)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="empty"):
        ImageFolderDataset(tmp_path / "empty", image_size=8)


def test_folder_non_image_with_image_extension(tmp_path: Path) -> None:
    Image.new("RGB", (10, 10)).save(tmp_path / "ok.png")
    (tmp_path / "fake.jpeg").write_text("this is text, not a JPEG")
    ds = ImageFolderDataset(tmp_path, image_size=8)
    results = {f.name: ds[i] for i, f in enumerate(ds.files)}
    assert results["fake.jpeg"] is None and results["ok.png"] is not None
    assert ds.num_unreadable == 1
