"""GenEval-format prompts of the shapes world: enumeration, hold-outs and prompt suites."""

from __future__ import annotations

import copy
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from argen.data.shapes.world import (
    NUMBER_WORDS,
    RELATIONS,
    TAGS,
    Metadata,
    ShapesWorld,
    plural,
    with_article,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- prompts


def _clause(shape: str, count: int = 1, color: str | None = None,
            position: tuple[str, int] | None = None) -> dict[str, Any]:
    clause: dict[str, Any] = {"class": shape, "count": count}
    if color is not None:
        clause["color"] = color
    if position is not None:
        clause["position"] = [position[0], position[1]]
    return clause


def _record(tag: str, include: list[dict[str, Any]], prompt: str,
            exclude: list[dict[str, Any]] | None = None) -> Metadata:
    # Key order (tag, include, exclude, prompt) matches GenEval's jsonl.
    record: Metadata = {"tag": tag, "include": include}
    if exclude is not None:
        record["exclude"] = exclude
    record["prompt"] = prompt
    return record


def _position_prompts(world: ShapesWorld) -> list[Metadata]:
    out = []
    pairs = [(a, b) for a in world.shapes for b in world.shapes if a != b]
    for a, b in pairs:
        for rel in RELATIONS:
            if not world.colored_position:
                prompt = f"a photo of {with_article(a)} {rel} {with_article(b)}"
                include = [_clause(b), _clause(a, position=(rel, 0))]
                out.append(_record("position", include, prompt))
                continue
            for ca in world.colors:
                for cb in world.colors:
                    if ca == cb:
                        continue
                    prompt = f"a photo of {with_article(ca)} {a} {rel} {with_article(cb)} {b}"
                    include = [_clause(b, color=cb), _clause(a, color=ca, position=(rel, 0))]
                    out.append(_record("position", include, prompt))
    return out


def dense_caption(metadata: Mapping[str, Any], objects: Sequence[tuple[str, str]]) -> str:
    """A caption that names every object's colour and shape (the scene's ``objects``, (shape, colour)
    in the order of the ``include`` clauses), keeping the record's relation: "a photo of a red circle
    left of a blue square", "a photo of a red circle and a green circle and a blue circle".

    Training-caption augmentation (recaptioning, as DALL-E 3's descriptive captions): GenEval's prompts
    name colours in two of six tasks only, so most scenes teach nothing about binding a colour word to
    its object; a share of descriptive captions does, while the GenEval forms stay in the training set.
    """
    include = metadata["include"]
    if metadata.get("tag") == "position" and len(objects) == 2:
        (sb, cb), (sa, ca) = objects  # clause 0 is the anchor B, clause 1 is A (A rel B)
        rel = include[1]["position"][0]
        return f"a photo of {with_article(ca)} {sa} {rel} {with_article(cb)} {sb}"
    return "a photo of " + " and ".join(f"{with_article(c)} {s}" for s, c in objects)


def enumerate_prompts(world: ShapesWorld, tag: str) -> list[Metadata]:
    """Every GenEval record of ``tag`` that the world can express, in a fixed order.

    Drawing uniformly from this list is the same distribution as GenEval's
    ``create_prompts.py`` (independent uniform classes / colours / numbers with A != B and
    c1 != c2), restricted to this world.
    """
    shapes, colors = world.shapes, world.colors
    if tag == "single_object":
        return [_record(tag, [_clause(s)], f"a photo of {with_article(s)}") for s in shapes]
    if tag == "two_object":
        return [_record(tag, [_clause(a), _clause(b)],
                        f"a photo of {with_article(a)} and {with_article(b)}")
                for a in shapes for b in shapes if a != b]
    if tag == "counting":
        return [_record(tag, [_clause(s, n)], f"a photo of {NUMBER_WORDS[n]} {plural(s)}",
                        exclude=[_clause(s, n + 1)])
                for s in shapes for n in world.counts]
    if tag == "colors":
        return [_record(tag, [_clause(s, color=c)], f"a photo of {with_article(c)} {s}")
                for s in shapes for c in colors]
    if tag == "position":
        return _position_prompts(world)
    if tag == "color_attr":
        return [_record(tag, [_clause(a, color=ca), _clause(b, color=cb)],
                        f"a photo of {with_article(ca)} {a} and {with_article(cb)} {b}")
                for a in shapes for b in shapes if a != b
                for ca in colors for cb in colors if ca != cb]
    raise ValueError(f"unknown tag {tag!r}; expected one of {TAGS}")


def uses_holdout(metadata: Mapping[str, Any], world: ShapesWorld) -> bool:
    """True if the prompt names a held-out (shape, colour) pair or a held-out relation."""
    include = metadata["include"]
    for clause in include:
        if "color" in clause and (clause["class"], clause["color"]) in world.holdout_pairs:
            return True
        if "position" in clause:
            rel, target = clause["position"]
            if (clause["class"], rel, include[target]["class"]) in world.held_relations:
                return True
    return False


@lru_cache(maxsize=256)
def _candidates(world: ShapesWorld, tag: str, holdout_mode: str) -> tuple[Metadata, ...]:
    prompts = enumerate_prompts(world, tag)
    if holdout_mode == "exclude":
        prompts = [p for p in prompts if not uses_holdout(p, world)]
    elif holdout_mode == "only":
        prompts = [p for p in prompts if uses_holdout(p, world)]
    elif holdout_mode != "include":
        raise ValueError(f"holdout_mode must be include / exclude / only, got {holdout_mode!r}")
    return tuple(prompts)


def make_prompt_suite(
    world: ShapesWorld | None = None,
    *,
    n_per_tag: int = 100,
    seed: int = 43,
    tags: Sequence[str] = TAGS,
    holdout_mode: str = "include",
    fill: bool = False,
) -> list[Metadata]:
    """A GenEval-format prompt suite for the shapes world, seeded and de-duplicated.

    Mirrors GenEval's ``create_prompts.py``: single_object draws ``min(n, #shapes)``
    distinct shapes; every other tag draws ``n_per_tag`` records uniformly with replacement;
    then exact duplicates of a whole record are dropped, keeping the first. Because this
    world is small, some tags end with fewer than ``n_per_tag`` prompts (e.g. 3 single_object
    and 6 two_object prompts with the default 3 shapes).

    ``holdout_mode``: ``"include"`` (all prompts), ``"exclude"`` (none that use a held-out
    pair/relation) or ``"only"`` (only those that do; tags without any, such as counting,
    are skipped with a log line). ``fill``: every tag ends with exactly ``n_per_tag`` records, the
    distinct prompts of a tag that ran out repeated in order (single_object's 3 prompts become
    ``n_per_tag`` records), so that every task is scored on as many images and its interval is as
    narrow as the others'. Returns a list of metadata dicts.
    """
    world = world or ShapesWorld()
    rng = np.random.default_rng(seed)
    drawn: list[Metadata] = []
    for tag in tags:
        pool = _candidates(world, tag, holdout_mode)
        if not pool:
            logger.info("prompt suite: no %s prompts for holdout_mode=%s", tag, holdout_mode)
            continue
        if tag == "single_object":
            idx = rng.choice(len(pool), size=min(n_per_tag, len(pool)), replace=False)
        else:
            idx = rng.integers(len(pool), size=n_per_tag)
        drawn.extend(copy.deepcopy(pool[i]) for i in idx)
    unique, seen = [], set()
    for record in drawn:
        key = json.dumps(record, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(record)
    return _filled(unique, n_per_tag) if fill else unique


def _filled(records: list[Metadata], n_per_tag: int) -> list[Metadata]:
    """Each tag's records cycled (in order) to exactly ``n_per_tag``."""
    out: list[Metadata] = []
    for tag in dict.fromkeys(r["tag"] for r in records):
        own = [r for r in records if r["tag"] == tag]
        out.extend(copy.deepcopy(own[i % len(own)]) for i in range(n_per_tag))
    return out


def write_prompt_suite(prompts: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write one JSON record per line (GenEval's evaluation_metadata.jsonl format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fp:
        for record in prompts:
            fp.write(json.dumps(record) + "\n")
    return path


def read_prompt_suite(path: str | Path) -> list[Metadata]:
    """Read a jsonl prompt suite written by :func:`write_prompt_suite` (or GenEval's file)."""
    with Path(path).open(encoding="utf-8") as fp:
        return [json.loads(line) for line in fp if line.strip()]
