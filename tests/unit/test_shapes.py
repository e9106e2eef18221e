"""Tests for the procedural shapes world (argen.data.shapes)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from argen.data.base import collate_samples
from argen.eval.detection import Detection
from argen.eval.geneval import ScoringOptions, evaluate_image, relative_position
from argen.data.shapes import (
    BACKGROUND_RGB,
    DEFAULT_COLORS,
    DEFAULT_SHAPES,
    PALETTE,
    RELATIONS,
    TAGS,
    ObjectSpec,
    SceneSpec,
    ShapesDataset,
    ShapesWorld,
    enumerate_prompts,
    make_prompt_suite,
    plural,
    read_prompt_suite,
    realize_prompt,
    render_scene,
    sample_scene,
    uses_holdout,
    with_article,
    write_prompt_suite,
)

# --------------------------------------------------------------------------- helpers


def pixel_box(obj: ObjectSpec) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = obj.bbox
    return (math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2))


def gt_satisfies(metadata: dict, objects: list[ObjectSpec]) -> bool:
    """GenEval's evaluate() with the ground-truth objects as confident detections."""
    detections = [Detection(o.shape, 1.0, o.bbox, o.color) for o in objects]
    return evaluate_image(metadata, detections, ScoringOptions())[0]


def components(image: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of non-background pixels."""
    foreground = np.any(image != np.asarray(BACKGROUND_RGB, np.uint8), axis=-1)
    return ndimage.label(foreground, structure=np.ones((3, 3), int))


def tags_of(ds: ShapesDataset, n: int) -> list[str]:
    return [ds.scene(i).tag for i in range(n)]


# --------------------------------------------------------------------------- palette, text


def test_palette_well_separated():
    names = list(PALETTE)
    rgb = {n: np.asarray(PALETTE[n], float) for n in names}
    for a, b in itertools.combinations(names, 2):
        assert np.linalg.norm(rgb[a] - rgb[b]) > 80, (a, b)
    for n in names:
        assert np.linalg.norm(rgb[n] - np.asarray(BACKGROUND_RGB, float)) > 80, n
        assert all(0 <= v <= 255 for v in PALETTE[n])
    assert set(DEFAULT_COLORS) <= set(PALETTE) and len(DEFAULT_COLORS) >= 6
    assert not {"black", "white"} & set(DEFAULT_COLORS)
    assert DEFAULT_SHAPES == ("circle", "square", "triangle")


def test_articles_and_plurals():
    assert with_article("orange") == "an orange"
    assert with_article("circle") == "a circle"
    assert plural("triangle") == "triangles"
    assert plural("cross") == "crosses"


def test_caption_templates_exact():
    world = ShapesWorld(shapes=("circle", "square", "triangle", "cross"))
    prompts = {tag: {r["prompt"]: r for r in enumerate_prompts(world, tag)} for tag in TAGS}
    assert "a photo of a circle" in prompts["single_object"]
    assert "a photo of a circle and a square" in prompts["two_object"]
    assert "a photo of three triangles" in prompts["counting"]
    assert "a photo of four crosses" in prompts["counting"]
    assert "a photo of a red circle" in prompts["colors"]
    assert "a photo of an orange triangle" in prompts["colors"]
    assert "a photo of a circle left of a square" in prompts["position"]
    assert "a photo of a red circle and a blue square" in prompts["color_attr"]
    assert "a photo of an orange square and a yellow circle" in prompts["color_attr"]
    # A != B, c1 != c2, and nothing outside the world.
    assert "a photo of a circle and a circle" not in prompts["two_object"]
    assert "a photo of a red circle and a red square" not in prompts["color_attr"]
    assert not any("one" in p or "five" in p for p in prompts["counting"])
    assert len(prompts["position"]) == 4 * 3 * len(RELATIONS)


def test_exact_metadata_records():
    world = ShapesWorld()
    by_prompt = {r["prompt"]: r for tag in TAGS for r in enumerate_prompts(world, tag)}
    assert json.dumps(by_prompt["a photo of three triangles"]) == (
        '{"tag": "counting", "include": [{"class": "triangle", "count": 3}], '
        '"exclude": [{"class": "triangle", "count": 4}], "prompt": "a photo of three triangles"}'
    )
    assert json.dumps(by_prompt["a photo of a circle right of a square"]) == (
        '{"tag": "position", "include": [{"class": "square", "count": 1}, '
        '{"class": "circle", "count": 1, "position": ["right of", 0]}], '
        '"prompt": "a photo of a circle right of a square"}'
    )
    assert json.dumps(by_prompt["a photo of a red circle and a blue square"]) == (
        '{"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "red"}, '
        '{"class": "square", "count": 1, "color": "blue"}], '
        '"prompt": "a photo of a red circle and a blue square"}'
    )


def test_colored_position_extension():
    world = ShapesWorld(colored_position=True)
    by_prompt = {r["prompt"]: r for r in enumerate_prompts(world, "position")}
    record = by_prompt["a photo of a red circle left of a blue square"]
    assert record["include"] == [
        {"class": "square", "count": 1, "color": "blue"},
        {"class": "circle", "count": 1, "color": "red", "position": ["left of", 0]},
    ]
    assert all(r["include"][0]["color"] != r["include"][1]["color"] for r in by_prompt.values())


# --------------------------------------------------------------------------- dataset items


@pytest.mark.parametrize("image_size", [32, 64])
def test_item_shape_range_dtype(image_size):
    ds = ShapesDataset(size=12, image_size=image_size, seed=1)
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"image", "label", "caption", "metadata", "index"}
        image = item["image"]
        assert image.shape == (3, image_size, image_size) and image.dtype == torch.float32
        assert image.min() >= -1.0 and image.max() <= 1.0
        assert item["label"].dtype == torch.long and item["label"].item() == -1
        assert item["index"].item() == i
        assert item["caption"] == json.loads(item["metadata"])["prompt"]


def test_image_size_validation():
    for bad in (16, 40, 100):
        with pytest.raises(ValueError, match="image_size"):
            ShapesDataset(size=1, image_size=bad)
    assert ShapesDataset(size=1, image_size=48)[0]["image"].shape == (3, 48, 48)
    assert ShapesDataset(size=1, image_size=128)[0]["image"].shape == (3, 128, 128)


def test_constructor_validation():
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(split="dev")
    with pytest.raises(ValueError, match="unknown tags"):
        ShapesDataset(tag_weights={"counts": 1.0})
    with pytest.raises(ValueError, match="shape"):
        ShapesDataset(shapes=("circle", "hexagon"))
    with pytest.raises(ValueError, match="colour"):
        ShapesDataset(holdout_pairs=[["circle", c] for c in DEFAULT_COLORS])
    with pytest.raises(ValueError, match="no prompt"):
        ShapesDataset(shapes=("circle",), tag_weights={"two_object": 1.0})
    with pytest.raises(IndexError):
        ShapesDataset(size=3)[3]


def test_determinism_and_splits():
    a = ShapesDataset(split="train", size=20, seed=3)
    b = ShapesDataset(split="train", size=20, seed=3)
    forward = {i: a[i] for i in (2, 7, 11)}
    for i in (11, 7, 2):  # reverse access order on a fresh dataset
        assert torch.equal(forward[i]["image"], b[i]["image"])
        assert forward[i]["metadata"] == b[i]["metadata"]
    for other in (ShapesDataset(split="val", size=20, seed=3),
                  ShapesDataset(split="test", size=20, seed=3),
                  ShapesDataset(split="train", size=20, seed=4)):
        same = sum(torch.equal(a[i]["image"], other[i]["image"]) for i in range(10))
        assert same == 0


def test_workers_and_cache_match_direct_access():
    ds = ShapesDataset(size=16, seed=5, cache=True)
    direct = [ds[i]["image"] for i in range(16)]
    assert torch.equal(ds[3]["image"], direct[3])  # served from the cache
    loader = DataLoader(ShapesDataset(size=16, seed=5), batch_size=4, num_workers=2,
                        collate_fn=collate_samples)
    images = torch.cat([batch["image"] for batch in loader])
    assert torch.equal(images, torch.stack(direct))


def test_tag_mix_honoured():
    ds = ShapesDataset(size=400, tag_weights={"counting": 3.0, "colors": 1.0}, seed=2)
    tags = tags_of(ds, 400)
    assert set(tags) == {"counting", "colors"}
    assert 0.65 < tags.count("counting") / 400 < 0.85
    uniform = tags_of(ShapesDataset(size=600, seed=2), 600)
    for tag in TAGS:
        assert 60 < uniform.count(tag) < 140, tag


# --------------------------------------------------------------------------- metadata format


def test_metadata_format_matches_geneval():
    ds = ShapesDataset(size=300, seed=7)
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        raw = item["metadata"]
        meta = json.loads(raw)
        assert raw == json.dumps(meta)  # GenEval's jsonl formatting
        tag = meta["tag"]
        seen.add(tag)
        keys = ["tag", "include", "prompt"]
        if tag == "counting":
            keys.insert(2, "exclude")
        assert list(meta) == keys
        include = meta["include"]
        for clause in include:
            assert set(clause) <= {"class", "count", "color", "position"}
            assert clause["class"] in DEFAULT_SHAPES
        colored = tag in ("colors", "color_attr")
        assert all(("color" in c) == colored for c in include)
        if tag == "counting":
            (inc,), (exc,) = include, meta["exclude"]
            assert inc["count"] in (2, 3, 4)
            assert exc == {"class": inc["class"], "count": inc["count"] + 1}
        elif tag == "position":
            assert "position" not in include[0] and include[1]["position"][1] == 0
            assert include[1]["position"][0] in RELATIONS
            assert include[0]["class"] != include[1]["class"]
        elif tag in ("two_object", "color_attr"):
            assert include[0]["class"] != include[1]["class"]
            if tag == "color_attr":
                assert include[0]["color"] != include[1]["color"]
        else:
            assert len(include) == 1 and include[0]["count"] == 1
    assert seen == set(TAGS)


# --------------------------------------------------------------------------- scene consistency


@pytest.mark.parametrize("image_size", [32, 64])
def test_position_scenes_satisfy_geneval_rule(image_size):
    ds = ShapesDataset(size=150, image_size=image_size, tag_weights={"position": 1.0}, seed=11)
    for i in range(len(ds)):
        image, objects, spec = ds.render(i)
        b_clause, a_clause = spec.metadata["include"]
        rel = a_clause["position"][0]
        b, a = objects[0], objects[1]
        assert (a.shape, b.shape) == (a_clause["class"], b_clause["class"])
        # Exact boxes, pixel-quantised boxes and the boxes of the rendered components.
        assert rel in relative_position(a.bbox, b.bbox), (i, spec.prompt)
        assert rel in relative_position(pixel_box(a), pixel_box(b)), (i, spec.prompt)
        labels, n = components(image)
        assert n == len(objects)
        rendered = []
        for obj in (a, b):
            x, y = (int(v) for v in obj.centroid)
            rows, cols = np.nonzero(labels == labels[y, x])
            rendered.append((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1))
        assert rel in relative_position(*rendered), (i, spec.prompt)
        # The perpendicular relation never holds, so the caption is the whole story.
        assert relative_position(a.bbox, b.bbox) == {rel}


def test_counting_renders_exactly_n():
    ds = ShapesDataset(size=200, tag_weights={"counting": 1.0}, distractor_prob=0.8, seed=13)
    saw_distractor = False
    for i in range(len(ds)):
        image, objects, spec = ds.render(i)
        clause = spec.metadata["include"][0]
        assert sum(o.shape == clause["class"] for o in objects) == clause["count"]
        assert len(objects) <= 4
        saw_distractor |= len(objects) > clause["count"]
        assert components(image)[1] == len(objects)
    assert saw_distractor


def test_distractor_policy():
    plain = ShapesDataset(size=100, seed=17)
    for i in range(len(plain)):
        spec = plain.scene(i)
        assert len(spec.objects) == sum(c["count"] for c in spec.metadata["include"])
    busy = ShapesDataset(size=200, seed=17, distractor_prob=0.9)
    extra = 0
    for i in range(len(busy)):
        spec = busy.scene(i)
        named = {c["class"] for c in spec.metadata["include"]}
        n_named = sum(c["count"] for c in spec.metadata["include"])
        assert 1 <= len(spec.objects) <= 4
        assert all(o.shape not in named for o in spec.objects[n_named:])
        extra += len(spec.objects) - n_named
        assert gt_satisfies(spec.metadata, list(spec.objects)), spec.prompt
    assert extra > 50


@pytest.mark.parametrize("image_size", [32, 64])
def test_no_overlap_min_gap_and_one_component_per_object(image_size):
    ds = ShapesDataset(size=150, image_size=image_size, seed=19, distractor_prob=0.5,
                       shapes=("circle", "square", "triangle", "cross"))
    for i in range(len(ds)):
        image, objects, _ = ds.render(i)
        for obj in objects:
            x1, y1, x2, y2 = obj.bbox
            assert 1.0 <= x1 < x2 <= image_size - 1.0 and 1.0 <= y1 < y2 <= image_size - 1.0
            assert 0.22 * image_size - 1e-6 <= obj.size <= 0.34 * image_size + 1e-6
        for p, q in itertools.combinations(objects, 2):
            gap_x = max(q.bbox[0] - p.bbox[2], p.bbox[0] - q.bbox[2])
            gap_y = max(q.bbox[1] - p.bbox[3], p.bbox[1] - q.bbox[3])
            assert max(gap_x, gap_y) >= 2.0 - 1e-9
        assert components(image)[1] == len(objects)


def test_rendered_colours_and_areas():
    world = ShapesWorld(shapes=("circle", "square", "triangle", "cross"), image_size=64)
    fill = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5, "cross": 0.64}
    rng = np.random.default_rng(0)
    background = np.asarray(BACKGROUND_RGB, float)
    for _ in range(40):
        spec = sample_scene(rng, world)
        image, objects = render_scene(spec)
        labels, _ = components(image)
        for obj in objects:
            x, y = (int(v) for v in obj.centroid)
            assert tuple(image[y, x]) == PALETTE[obj.color]
            colour = np.asarray(PALETTE[obj.color], float) - background
            region = image[labels == labels[y, x]].astype(float) - background
            coverage = (region @ colour / (colour @ colour)).sum()
            assert coverage == pytest.approx(fill[obj.shape] * obj.size**2, rel=0.04), obj


def test_render_at_larger_size_scales_layout():
    spec = sample_scene(np.random.default_rng(3), ShapesWorld(), tag="position")
    small, objects_small = render_scene(spec)
    large, objects_large = render_scene(spec, 64)
    assert small.shape == (32, 32, 3) and large.shape == (64, 64, 3) and large.dtype == np.uint8
    for s, l in zip(objects_small, objects_large):
        assert np.allclose(np.asarray(l.bbox), 2 * np.asarray(s.bbox))
    assert components(large)[1] == len(objects_large)


# --------------------------------------------------------------------------- held-out splits


def test_holdout_absent_from_train_present_in_test():
    pairs = [["circle", "red"], ["triangle", "blue"]]
    relations = [["circle", "left of", "square"]]
    banned_relations = {("circle", "left of", "square"), ("square", "right of", "circle")}
    kwargs = dict(size=400, seed=23, holdout_pairs=pairs, holdout_relations=relations,
                  tag_weights={"position": 2.0, "colors": 1.0, "color_attr": 1.0, "counting": 1.0})

    def summarise(split):
        ds = ShapesDataset(split=split, **kwargs)
        found_pairs, found_relations = set(), set()
        for i in range(len(ds)):
            spec = ds.scene(i)
            found_pairs |= {(o.shape, o.color) for o in spec.objects}
            if spec.tag == "position":
                b, a = spec.metadata["include"]
                found_relations.add((a["class"], a["position"][0], b["class"]))
        return found_pairs, found_relations

    train_pairs, train_relations = summarise("train")
    test_pairs, test_relations = summarise("test")
    assert not train_pairs & {tuple(p) for p in pairs}
    assert not train_relations & banned_relations
    assert {tuple(p) for p in pairs} <= test_pairs
    assert banned_relations <= test_relations
    assert len(train_relations) == 3 * 2 * 4 - 2  # everything else still appears in train


# --------------------------------------------------------------------------- prompt suites


def test_a_filled_suite_gives_every_task_as_many_prompts():
    world = ShapesWorld()
    plain = make_prompt_suite(world, n_per_tag=24, seed=0)
    filled = make_prompt_suite(world, n_per_tag=24, seed=0, fill=True)
    assert {tag: sum(r["tag"] == tag for r in filled) for tag in TAGS} == dict.fromkeys(TAGS, 24)
    singles = [r for r in filled if r["tag"] == "single_object"]
    assert singles[:3] == [r for r in plain if r["tag"] == "single_object"] and singles[3:6] == singles[:3]
    keys = {json.dumps(r, sort_keys=True) for r in filled}
    assert keys == {json.dumps(r, sort_keys=True) for r in plain}  # the same prompts, repeated


def test_prompt_suite_deduplicated_seeded_and_valid(tmp_path):
    world = ShapesWorld()
    suite = make_prompt_suite(world, n_per_tag=100, seed=43)
    assert suite == make_prompt_suite(world, n_per_tag=100, seed=43)
    assert suite != make_prompt_suite(world, n_per_tag=100, seed=44)
    keys = [json.dumps(r, sort_keys=True) for r in suite]
    assert len(keys) == len(set(keys))
    counts = {tag: sum(r["tag"] == tag for r in suite) for tag in TAGS}
    assert counts["single_object"] == 3 and counts["two_object"] == 6
    assert counts["counting"] == 9 and counts["position"] == 24
    assert 50 < counts["color_attr"] <= 100
    # Tags appear in GenEval's order, and every ground-truth rendering passes GenEval's rules.
    order = [r["tag"] for r in suite]
    assert order == sorted(order, key=TAGS.index)
    rng = np.random.default_rng(0)
    for record in suite:
        spec = realize_prompt(rng, record, world)
        assert gt_satisfies(record, list(spec.objects)), record["prompt"]
    path = write_prompt_suite(suite, tmp_path / "shapes" / "evaluation_metadata.jsonl")
    lines = path.read_text().splitlines()
    assert lines == [json.dumps(r) for r in suite]
    assert read_prompt_suite(path) == suite


def test_prompt_suite_holdout_only():
    world = ShapesWorld(holdout_pairs=frozenset({("circle", "red")}),
                        holdout_relations=frozenset({("triangle", "above", "square")}))
    suite = make_prompt_suite(world, n_per_tag=50, seed=1, holdout_mode="only")
    assert suite and {r["tag"] for r in suite} == {"colors", "position", "color_attr"}
    for record in suite:
        assert uses_holdout(record, world)
        pairs = {(c["class"], c.get("color")) for c in record["include"]}
        if record["tag"] == "position":
            b, a = record["include"]
            assert (a["class"], a["position"][0], b["class"]) in {
                ("triangle", "above", "square"), ("square", "below", "triangle")}
        else:
            assert ("circle", "red") in pairs
    excluded = make_prompt_suite(world, n_per_tag=50, seed=1, holdout_mode="exclude")
    assert not any(uses_holdout(r, world) for r in excluded)


def test_scene_spec_ground_truth_api():
    spec = sample_scene(np.random.default_rng(5), ShapesWorld(), tag="color_attr")
    assert isinstance(spec, SceneSpec) and spec.tag == "color_attr"
    assert json.loads(spec.metadata_json()) == spec.metadata
    for obj, clause in zip(spec.objects, spec.metadata["include"]):
        assert (obj.shape, obj.color) == (clause["class"], clause["color"])
        d = obj.to_dict()
        assert set(d) == {"class", "color", "bbox", "centroid"} and len(d["bbox"]) == 4
    tri = ObjectSpec("triangle", "red", (0.0, 0.0, 9.0, 9.0))
    assert tri.center == (4.5, 4.5) and tri.centroid == (4.5, 6.0)


def test_dense_captions_name_every_object_and_keep_the_relation():
    from argen.data.shapes import ShapesDataset
    from argen.data.shapes.prompts import dense_caption

    ds = ShapesDataset(split="train", size=400, seed=3, dense_captions=1.0)
    plain = ShapesDataset(split="train", size=400, seed=3)
    for i in range(400):
        spec = ds.scene(i)
        caption = ds[i]["caption"]
        assert plain[i]["caption"] == spec.prompt  # off by default
        for obj in spec.objects:
            assert f"{obj.color} {obj.shape}" in caption
        if spec.tag == "position":
            rel = spec.metadata["include"][1]["position"][0]
            (b, a) = spec.objects
            assert caption.endswith(f"{a.color} {a.shape} {rel} {'an' if b.color[0] in 'aeiou' else 'a'} "
                                    f"{b.color} {b.shape}")
        assert json.loads(ds[i]["metadata"])["prompt"] == spec.prompt  # the GenEval record is kept
    md = {"tag": "counting", "include": [{"class": "circle", "count": 2}]}
    assert dense_caption(md, [("circle", "orange"), ("circle", "red")]) == \
        "a photo of an orange circle and a red circle"


def test_dense_caption_share_is_deterministic():
    from argen.data.shapes import ShapesDataset

    half = ShapesDataset(split="train", size=600, seed=0, dense_captions=0.5)
    again = ShapesDataset(split="train", size=600, seed=0, dense_captions=0.5)
    dense = ShapesDataset(split="train", size=600, seed=0, dense_captions=1.0)
    picks = [half.caption(i) == dense.caption(i) != half.scene(i).prompt for i in range(600)]
    changed = [dense.caption(i) != half.scene(i).prompt for i in range(600)]
    assert 0.4 < sum(picks) / sum(changed) < 0.6
    assert [half.caption(i) for i in range(50)] == [again[i]["caption"] for i in range(50)]
    with pytest.raises(ValueError, match="dense_captions"):
        ShapesDataset(split="train", size=1, dense_captions=1.5)
