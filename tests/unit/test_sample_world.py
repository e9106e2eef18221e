"""argen-sample's prompt suite comes from the generator's training world (held-out combinations included)."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from argen.cli.common import ConfigError
from argen.cli.sample import build_conditions, training_world
from argen.data.codes import CACHE_VERSION
from argen.data.shapes import ShapesWorld, uses_holdout
from argen.pipeline import ExportInfo

PAIRS = [["circle", "red"], ["square", "blue"]]
RELATIONS = [["circle", "left of", "square"]]


def _info(tmp_path, train: dict | None) -> ExportInfo:
    codes = tmp_path / "codes"
    codes.mkdir()
    datasets = {"train": train} if train is not None else {}
    (codes / "manifest.json").write_text(json.dumps(
        {"version": CACHE_VERSION, "preprocessing": {"datasets": datasets}}))
    gen = tmp_path / "export"
    gen.mkdir()
    return ExportInfo(generator_path=str(gen), generator_meta={"codes_dir": str(codes)},
                      tokenizer_path=None, tokenizer_meta={})


def _shapes_train(**extra) -> dict:
    return {"_target_": "argen.data.shapes.ShapesDataset", "split": "train", "size": 50000,
            "image_size": 32, "seed": 0, **extra}


def _cfg(holdout: str):
    return OmegaConf.create({"classes": None, "prompts": None, "prompt_file": None, "geneval_metadata": None,
                             "suite": "shapes", "suite_per_tag": 6, "suite_fill": False,
                             "suite_holdout": holdout, "seed": 0})


class _TextGenerator:
    num_classes = None


def test_training_world_reads_the_held_out_combinations(tmp_path):
    world = training_world(_info(tmp_path, _shapes_train(holdout_pairs=PAIRS, holdout_relations=RELATIONS)))
    assert world.holdout_pairs == {("circle", "red"), ("square", "blue")}
    assert ("square", "right of", "circle") in world.held_relations  # the mirror, by default


def test_suite_splits_seen_and_held_out_prompts(tmp_path):
    info = _info(tmp_path, _shapes_train(holdout_pairs=PAIRS, holdout_relations=RELATIONS))
    world = training_world(info)
    only = build_conditions(_cfg("only"), _TextGenerator(), info).metadata
    seen = build_conditions(_cfg("exclude"), _TextGenerator(), info).metadata
    assert only and seen
    assert all(uses_holdout(r, world) for r in only)
    assert not any(uses_holdout(r, world) for r in seen)
    assert {r["tag"] for r in only} <= {"colors", "color_attr", "position"}


def test_default_world_without_a_shapes_cache(tmp_path):
    digits = {"_target_": "argen.data.digits.DigitsDataset", "split": "train"}
    assert training_world(_info(tmp_path, digits)) == ShapesWorld()
    with pytest.raises(ConfigError, match="suite_holdout needs the generator's training world"):
        build_conditions(_cfg("only"), _TextGenerator(), None)


def test_held_out_suite_needs_the_cache(tmp_path):
    info = _info(tmp_path, None)  # a cache whose manifest names no training dataset
    with pytest.raises(ConfigError, match="suite_holdout needs the generator's training world"):
        build_conditions(_cfg("exclude"), _TextGenerator(), info)
