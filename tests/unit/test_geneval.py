"""Tests for GenEval's format, layout and scoring rules (argen.eval.geneval, eval.md section 2)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from argen.eval.detection import Detection, Detector
from argen.eval.geneval import (
    IMAGES_PER_PROMPT,
    TAGS,
    GenEvalReport,
    ScoringOptions,
    box_iou,
    evaluate_folder,
    evaluate_image,
    filter_detections,
    iter_sample_folder,
    official_command,
    read_metadata,
    read_official_results,
    read_results_jsonl,
    relative_position,
    score_results,
    validate_metadata,
    write_results_jsonl,
    write_sample_folder,
)

# --------------------------------------------------------------------------- helpers


def det(label: str, box=(0, 0, 10, 10), score: float = 1.0, color: str | None = None) -> Detection:
    return Detection(label=label, score=score, box=tuple(float(v) for v in box), color=color)


def single(obj: str = "circle") -> dict:
    return {"tag": "single_object", "include": [{"class": obj, "count": 1}], "prompt": f"a photo of a {obj}"}


def two(a: str = "circle", b: str = "square") -> dict:
    return {"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
            "prompt": f"a photo of a {a} and a {b}"}


def counting(obj: str = "circle", n: int = 3) -> dict:
    return {"tag": "counting", "include": [{"class": obj, "count": n}],
            "exclude": [{"class": obj, "count": n + 1}], "prompt": f"a photo of {n} {obj}s"}


def colors(obj: str = "circle", color: str = "red") -> dict:
    return {"tag": "colors", "include": [{"class": obj, "count": 1, "color": color}],
            "prompt": f"a photo of a {color} {obj}"}


def position(a: str = "circle", rel: str = "left of", b: str = "square", colored: bool = False) -> dict:
    target = {"class": b, "count": 1, **({"color": "blue"} if colored else {})}
    clause = {"class": a, "count": 1, "position": [rel, 0], **({"color": "red"} if colored else {})}
    return {"tag": "position", "include": [target, clause], "prompt": f"a photo of a {a} {rel} a {b}"}


def color_attr(a: str = "circle", ca: str = "red", b: str = "square", cb: str = "blue") -> dict:
    return {"tag": "color_attr",
            "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
            "prompt": f"a photo of a {ca} {a} and a {cb} {b}"}


LEFT = (0, 0, 10, 10)
RIGHT = (30, 0, 40, 10)

# --------------------------------------------------------------------------- the six tags


def test_single_object():
    assert evaluate_image(single(), [det("circle")]) == (True, "")
    ok, reason = evaluate_image(single(), [det("square")])
    assert not ok and reason == "expected circle >= 1, found 0"


def test_two_object():
    assert evaluate_image(two(), [det("circle"), det("square", RIGHT)])[0]
    ok, reason = evaluate_image(two(), [det("circle"), det("circle", RIGHT)])
    assert not ok and "expected square >= 1, found 0" in reason


def test_counting_threshold_and_exclude():
    three = [det("circle", (20 * i, 0, 20 * i + 10, 10), 0.95) for i in range(3)]
    assert evaluate_image(counting(n=3), three) == (True, "")
    # A 0.85-score fourth object is below the counting threshold 0.9: "exactly three" still holds.
    assert evaluate_image(counting(n=3), three + [det("circle", (80, 0, 90, 10), 0.85)])[0]
    # A 0.95 one survives and trips the exclude clause {count: 4}.
    ok, reason = evaluate_image(counting(n=3), three + [det("circle", (80, 0, 90, 10), 0.95)])
    assert not ok and reason == "expected circle < 4, found 4"
    # A 0.5 object is not counted: only two remain.
    ok, reason = evaluate_image(counting(n=3), three[:2] + [det("circle", (80, 0, 90, 10), 0.5)])
    assert not ok and reason == "expected circle >= 3, found 2"
    # Outside the counting tag the same 0.5 object does count (threshold 0.3).
    meta = {"tag": "two_object", "include": [{"class": "circle", "count": 3}], "prompt": "p"}
    assert evaluate_image(meta, three[:2] + [det("circle", (80, 0, 90, 10), 0.5)])[0]


def test_threshold_is_strict_0_3():
    assert not evaluate_image(single(), [det("circle", score=0.3)])[0]
    assert evaluate_image(single(), [det("circle", score=0.31)])[0]
    assert not evaluate_image(two(), [det("circle"), det("square", RIGHT, 0.25)])[0]
    assert evaluate_image(single(), [det("circle", score=0.25)], ScoringOptions(threshold=0.2))[0]


def test_max_objects_per_class():
    many = [det("circle", (20 * i, 0, 20 * i + 10, 10), 0.5 + i / 100) for i in range(20)]
    need17 = {"tag": "two_object", "include": [{"class": "circle", "count": 17}], "prompt": "p"}
    ok, reason = evaluate_image(need17, many)
    assert not ok and reason == "expected circle >= 17, found 16"
    assert evaluate_image(need17, many, ScoringOptions(max_objects=20))[0]
    kept = filter_detections(many, "two_object")["circle"]
    assert len(kept) == 16 and [d.score for d in kept] == sorted((d.score for d in many), reverse=True)[:16]
    # The exclude clause also only sees 16.
    cap = {"tag": "two_object", "include": [{"class": "circle", "count": 1}],
           "exclude": [{"class": "circle", "count": 17}], "prompt": "p"}
    assert evaluate_image(cap, many)[0]


def test_colors():
    assert evaluate_image(colors(), [det("circle", color="red")]) == (True, "")
    ok, reason = evaluate_image(colors(), [det("circle", color="blue")])
    assert not ok and reason.startswith("expected red circle >= 1, found 0 red")
    # No colour from the detector never matches.
    assert not evaluate_image(colors(), [det("circle", color=None)])[0]
    # Only the top-count detections are colour-checked: a lower-scoring red circle does not help.
    assert not evaluate_image(colors(), [det("circle", score=0.9, color="blue"), det("circle", RIGHT, 0.8, "red")])[0]
    assert evaluate_image(colors(), [det("circle", score=0.7, color="blue"), det("circle", RIGHT, 0.8, "red")])[0]


def test_color_attr():
    good = [det("circle", color="red"), det("square", RIGHT, color="blue")]
    assert evaluate_image(color_attr(), good)[0]
    swapped = [det("circle", color="blue"), det("square", RIGHT, color="red")]
    ok, reason = evaluate_image(color_attr(), swapped)
    assert not ok
    assert "expected red circle >= 1, found 0 red" in reason and "expected blue square >= 1, found 0 blue" in reason


def test_position_pass_and_mirror_fail():
    assert evaluate_image(position(), [det("square", RIGHT), det("circle", LEFT)]) == (True, "")
    ok, reason = evaluate_image(position(), [det("square", LEFT), det("circle", RIGHT)])
    assert not ok and reason == "expected circle left of square, found right of"
    for rel, a_box, b_box in [("right of", RIGHT, LEFT), ("above", (0, 0, 10, 10), (0, 30, 10, 40)),
                              ("below", (0, 30, 10, 40), (0, 0, 10, 10))]:
        assert evaluate_image(position(rel=rel), [det("square", b_box), det("circle", a_box)])[0], rel


def test_position_margin_no_relation():
    # Centres 1 px apart, margin 0.1 * (10 + 10) = 2 px: the shrunk offset is zero -> no relation.
    assert relative_position((0, 0, 10, 10), (1, 0, 11, 10)) == set()
    ok, reason = evaluate_image(position(), [det("square", (1, 0, 11, 10)), det("circle", (0, 0, 10, 10))])
    assert not ok and reason == "expected circle left of square, found no relation"
    # With no margin the same pair is "left of".
    assert relative_position((0, 0, 10, 10), (1, 0, 11, 10), margin=0.0) == {"left of"}


def test_position_diagonal_two_relations():
    rels = relative_position((0, 0, 10, 10), (30, 30, 40, 40))
    assert rels == {"left of", "above"}
    assert evaluate_image(position(), [det("square", (30, 30, 40, 40)), det("circle", (0, 0, 10, 10))])[0]
    assert evaluate_image(position(rel="above"), [det("square", (30, 30, 40, 40)), det("circle", (0, 0, 10, 10))])[0]


def test_relative_position_uses_unshrunk_norm():
    # o = (-12, -8); margin 0.1 * 20 = 2 per axis -> o' = (-10, -6); ||o|| = 14.42:
    # dx = -0.693 (left of), dy = -0.416 (not above). Normalising by ||o'|| would give dy = -0.51.
    assert relative_position((0, 0, 10, 10), (12, 8, 22, 18)) == {"left of"}


def test_position_every_target_and_every_a():
    meta = {"tag": "position", "include": [{"class": "square", "count": 2},
                                           {"class": "circle", "count": 1, "position": ["left of", 0]}], "prompt": "p"}
    both_right = [det("square", (30, 0, 40, 10)), det("square", (60, 0, 70, 10)), det("circle", (0, 0, 10, 10))]
    assert evaluate_image(meta, both_right)[0]
    one_left = [det("square", (30, 0, 40, 10)), det("square", (-60, 0, -50, 10)), det("circle", (0, 0, 10, 10))]
    assert not evaluate_image(meta, one_left)[0]


def test_failed_group_propagates():
    ok, reason = evaluate_image(position(), [det("circle", LEFT)])
    assert not ok
    assert reason.splitlines() == ["expected square >= 1, found 0",
                                   "no target for circle to be left of square (clause 0 failed)"]
    # A colour failure of the target clause also leaves no group (coloured position prompt).
    scene_dets = [det("square", RIGHT, color="green"), det("circle", LEFT, color="red")]
    ok, reason = evaluate_image(position(colored=True), scene_dets)
    assert not ok and "no target for circle" in reason
    # A colour failure on the positioned clause skips its position check (one reason only).
    scene_dets = [det("square", LEFT, color="blue"), det("circle", RIGHT, color="green")]
    ok, reason = evaluate_image(position(colored=True), scene_dets)
    assert not ok and reason.splitlines() == ["expected red circle >= 1, found 0 red (1 green)"]


def test_nms_off_by_default_and_optional():
    dup = [det("circle", (0, 0, 10, 10), 0.9), det("circle", (1, 0, 11, 10), 0.8), det("circle", (50, 0, 60, 10), 0.7)]
    assert len(filter_detections(dup, "single_object")["circle"]) == 3
    kept = filter_detections(dup, "single_object", ScoringOptions(nms_threshold=0.5))["circle"]
    assert [d.score for d in kept] == [0.9, 0.7]
    assert box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0 and box_iou((0, 0, 9, 9), (20, 20, 29, 29)) == 0.0


def test_evaluate_image_rejects_bad_metadata():
    with pytest.raises(ValueError, match="unknown tag"):
        evaluate_image({"tag": "nope", "include": [{"class": "a", "count": 1}], "prompt": "p"}, [])


# --------------------------------------------------------------------------- scoring


def synthetic_records() -> list[dict]:
    table = {  # index: (tag, per-image correctness)
        0: ("single_object", [1, 1, 0, 0]), 1: ("single_object", [0, 0, 0, 0]),
        2: ("two_object", [1, 1, 1, 1]),
        3: ("counting", [1, 0, 0, 0]), 4: ("counting", [1, 0, 0, 0]),
        5: ("colors", [0, 0, 0, 0]),
        6: ("position", [1, 1, 0, 0]),
        7: ("color_attr", [1, 1, 1, 0]),
    }
    return [{"index": i, "tag": tag, "correct": bool(c)} for i, (tag, cs) in table.items() for c in cs]


def test_score_results_exact_numbers():
    report = score_results(synthetic_records(), n_boot=200, seed=1)
    assert isinstance(report, GenEvalReport)
    assert report.task_scores == {"single_object": 0.25, "two_object": 1.0, "counting": 0.25, "colors": 0.0,
                                  "position": 0.5, "color_attr": 0.75}
    assert report.overall == pytest.approx(2.75 / 6)
    assert report.n_tasks == 6 and report.missing_tasks == []
    assert report.image_accuracy == pytest.approx(13 / 32)  # differs from overall: tasks are unweighted
    assert report.prompt_accuracy == pytest.approx(6 / 8)
    assert (report.n_images, report.n_prompts) == (32, 8)
    assert report.task_counts["single_object"] == {"images": 8, "correct_images": 2, "prompts": 2, "correct_prompts": 1}
    assert report.ci_low <= report.overall <= report.ci_high
    again = score_results(synthetic_records(), n_boot=200, seed=1)
    assert (again.ci_low, again.ci_high) == (report.ci_low, report.ci_high)
    d = report.to_dict()
    assert json.loads(json.dumps(d))["overall"] == pytest.approx(2.75 / 6)
    assert "overall (mean of 6 tasks)" in report.summary()
    assert set(report.task_ci) == set(report.task_scores)
    for tag, (low, high) in report.task_ci.items():  # each task's own interval holds its score
        assert low <= report.task_scores[tag] <= high
    assert report.task_ci["two_object"] == [1.0, 1.0] and report.task_ci["colors"] == [0.0, 0.0]
    assert report.task_ci["single_object"] == [0.0, 0.5]  # prompts of 0 and 2 correct images out of 4 each


def test_score_results_missing_tasks_and_no_bootstrap():
    records = [r for r in synthetic_records() if r["tag"] in ("two_object", "position")]
    report = score_results(records, n_boot=0)
    assert report.n_tasks == 2 and report.overall == pytest.approx(0.75)
    assert report.missing_tasks == ["single_object", "counting", "colors", "color_attr"]
    assert report.notes and math.isnan(report.ci_low)
    with pytest.raises(ValueError):
        score_results([])


def test_prompt_correct_if_any_image_correct_grouped_by_metadata():
    meta_a, meta_b = json.dumps(single("a")), json.dumps(single("b"))
    records = [{"tag": "single_object", "metadata": meta_a, "correct": c} for c in (False, False, False, True)]
    records += [{"tag": "single_object", "metadata": meta_b, "correct": False} for _ in range(4)]
    report = score_results(records, n_boot=0)
    assert report.prompt_accuracy == 0.5 and report.image_accuracy == 1 / 8 and report.n_prompts == 2


# --------------------------------------------------------------------------- metadata reader


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_metadata_valid(tmp_path):
    records = [single(), two(), counting(), colors(), position(), color_attr()]
    path = write_lines(tmp_path / "meta.jsonl", [json.dumps(r) for r in records[:3]] + [""] +
                       [json.dumps(r) for r in records[3:]])
    assert read_metadata(path) == records
    assert {r["tag"] for r in read_metadata(path)} == set(TAGS)


@pytest.mark.parametrize("bad, lineno, match", [
    ({"tag": "shapes", "include": [{"class": "a", "count": 1}], "prompt": "p"}, 3, "unknown tag"),
    ({"tag": "single_object", "include": [], "prompt": "p"}, 3, "non-empty"),
    ({"tag": "single_object", "include": [{"class": "a", "count": 0}], "prompt": "p"}, 3, "count"),
    ({"tag": "single_object", "include": [{"count": 1}], "prompt": "p"}, 3, "class"),
    ({"tag": "position", "include": [{"class": "a", "count": 1, "position": ["left of", 0]}], "prompt": "p"}, 3,
     "earlier clause"),
    ({"tag": "position", "include": [{"class": "a", "count": 1}, {"class": "b", "count": 1, "position": ["near", 0]}],
      "prompt": "p"}, 3, "unknown relation"),
    ({"tag": "single_object", "include": [{"class": "a", "count": 1}]}, 3, "prompt"),
])
def test_read_metadata_errors_name_file_and_line(tmp_path, bad, lineno, match):
    path = write_lines(tmp_path / "meta.jsonl", [json.dumps(single()), json.dumps(two()), json.dumps(bad)])
    with pytest.raises(ValueError, match=match) as info:
        read_metadata(path)
    assert f"{path}:{lineno}:" in str(info.value)


def test_read_metadata_bad_json_line_number(tmp_path):
    path = write_lines(tmp_path / "meta.jsonl", [json.dumps(single()), "{not json", json.dumps(two())])
    with pytest.raises(ValueError, match=r"meta\.jsonl:2:"):
        read_metadata(path)


def test_validate_metadata_allows_colored_position_extension():
    validate_metadata(position(colored=True))


# --------------------------------------------------------------------------- folder layout


def images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(n)]


def test_folder_round_trip_and_filters(tmp_path):
    root = tmp_path / "samples"
    imgs0, imgs5 = images(IMAGES_PER_PROMPT, 0), images(2, 1)
    folder = write_sample_folder(root, 0, single(), imgs0, grid=True)
    write_sample_folder(root, 5, position(), imgs5)
    assert folder == root / "00000"
    assert (folder / "metadata.jsonl").read_text().count("\n") == 1
    assert json.loads((folder / "metadata.jsonl").read_text()) == single()
    assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png", "0002.png", "0003.png"]
    with Image.open(folder / "grid.png") as grid:
        assert grid.size == (16, 16)
    # Things the official scorer ignores.
    (root / "notes").mkdir()
    (root / "notes" / "metadata.jsonl").write_text(json.dumps(single()))
    (root / "00007.txt").write_text("not a folder")
    (root / "00009").write_text("a file, not a folder")
    for name in ("readme.txt", "0004.jpg", "x0004.png", "0004.png.bak"):
        (folder / "samples" / name).write_text("junk")
    found = list(iter_sample_folder(root))
    assert [i for i, _, _ in found] == [0, 5]
    assert found[0][1] == single() and found[1][1] == position()
    assert [p.name for p in found[0][2]] == ["0000.png", "0001.png", "0002.png", "0003.png"]
    for path, img in zip(found[0][2], imgs0):
        with Image.open(path) as im:
            np.testing.assert_array_equal(np.asarray(im.convert("RGB")), img)
    # Rewriting with fewer images drops stale samples the scorer would otherwise read.
    write_sample_folder(root, 0, single(), imgs0[:1])
    assert [p.name for p in next(iter_sample_folder(root))[2]] == ["0000.png"]


def test_folder_numeric_order_and_bad_inputs(tmp_path):
    for index in (12, 3, 100):
        write_sample_folder(tmp_path, index, single(), images(1, index))
    assert [i for i, _, _ in iter_sample_folder(tmp_path)] == [3, 12, 100]
    with pytest.raises(ValueError, match="uint8"):
        write_sample_folder(tmp_path, 1, single(), [np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(ValueError, match="unknown tag"):
        write_sample_folder(tmp_path, 1, {"tag": "x", "include": [], "prompt": "p"}, images(1, 0))
    (tmp_path / "00003" / "metadata.jsonl").write_text("{broken")
    with pytest.raises(ValueError, match="00003"):
        list(iter_sample_folder(tmp_path))


# --------------------------------------------------------------------------- end to end with a fake detector


class FakeDetector:
    """Reads the scene from the image's first pixel: red value = scene id."""

    name = "fake"

    SCENES = {
        0: [det("circle", score=0.9)],
        1: [],
        2: [det("square", RIGHT, 0.9), det("circle", LEFT, 0.9)],
        3: [det("square", LEFT, 0.9), det("circle", RIGHT, 0.9)],
    }

    def detect(self, image: np.ndarray) -> list[Detection]:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        return list(self.SCENES[int(image[0, 0, 0])])


def scene(scene_id: int) -> np.ndarray:
    return np.full((8, 8, 3), scene_id, dtype=np.uint8)


def test_evaluate_folder_with_fake_detector(tmp_path):
    assert isinstance(FakeDetector(), Detector)
    root = tmp_path / "gen"
    write_sample_folder(root, 0, single(), [scene(s) for s in (0, 0, 0, 1)])
    write_sample_folder(root, 1, position(), [scene(s) for s in (3, 3, 3, 3)])
    write_sample_folder(root, 2, position(), [scene(s) for s in (2, 3, 3, 3)])
    report, records = evaluate_folder(root, FakeDetector(), progress=False, n_boot=50)
    assert len(records) == 12
    assert [r["correct"] for r in records[:4]] == [True, True, True, False]
    assert records[3]["reason"] == "expected circle >= 1, found 0"
    assert records[0]["details"] == {"circle": [[0.0, 0.0, 10.0, 10.0, 0.9]]}
    assert records[0]["colors"] == {"circle": [None]}
    assert report.task_scores == {"single_object": 0.75, "position": 0.125}
    assert report.overall == pytest.approx((0.75 + 0.125) / 2)
    assert report.prompt_accuracy == pytest.approx(2 / 3)
    assert report.n_tasks == 2

    out = tmp_path / "res" / "results.jsonl"
    write_results_jsonl(records, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {"filename", "tag", "metadata", "correct", "reason", "details"} <= set(rows[0])
    assert isinstance(rows[0]["metadata"], str) and json.loads(rows[0]["metadata"]) == single()
    again = read_official_results(out, n_boot=50)
    assert again.task_scores == report.task_scores and again.prompt_accuracy == report.prompt_accuracy


# --------------------------------------------------------------------------- official tool


def test_official_results_parsing(tmp_path):
    meta = json.dumps(position())
    lines = [
        {"filename": f"/x/gen/00004/samples/000{k}.png", "tag": "position", "prompt": "p", "correct": k == 0,
         "reason": "", "metadata": meta, "details": "{}"} for k in range(4)
    ] + [
        {"tag": "single_object", "correct": False, "metadata": json.dumps(single())},  # no filename: by metadata
        {"tag": "single_object", "correct": True, "metadata": json.dumps(single())},
    ]
    path = write_lines(tmp_path / "results.jsonl", [json.dumps(r) for r in lines])
    records = read_results_jsonl(path)
    assert [r["index"] for r in records[:4]] == [4, 4, 4, 4]
    report = read_official_results(path, n_boot=0)
    assert report.task_scores == {"single_object": 0.5, "position": 0.25}
    assert report.n_prompts == 2 and report.prompt_accuracy == 1.0
    bad = write_lines(tmp_path / "bad.jsonl", [json.dumps(lines[0]), json.dumps({"correct": True})])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2:"):
        read_official_results(bad)


def test_official_command():
    argv = official_command("/data/gen", "/data/res/results.jsonl", "/models/m2f", "/src/geneval")
    assert argv == ["python", "/src/geneval/evaluation/evaluate_images.py", "/data/gen",
                    "--outfile", "/data/res/results.jsonl", "--model-path", "/models/m2f"]
    argv = official_command("g", "o", "d", "r", python="/env/bin/python", options=ScoringOptions(nms_threshold=0.5))
    assert argv[0] == "/env/bin/python" and argv[-2:] == ["--options", "max_overlap=0.5"]
