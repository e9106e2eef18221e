"""Layouts and scenes of the shapes world: :func:`realize_prompt` and :func:`sample_scene`."""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any, Mapping

import numpy as np

from argen.data.shapes.prompts import _candidates, uses_holdout
from argen.data.shapes.world import (
    POSITION_THRESHOLD,
    TAGS,
    ObjectSpec,
    SceneSpec,
    ShapesWorld,
)

_MAX_LAYOUT_ATTEMPTS = 100
_TRIES_PER_OBJECT = 64
_QUANTISATION_SLACK = 1.0  # px each box edge may move in a detector's pixel bbox


# --------------------------------------------------------------------------- layout


def _separated(cands: np.ndarray, placed: np.ndarray, gap: float) -> np.ndarray:
    """(T, 4) candidate boxes vs (M, 4) placed boxes -> (T,) bool: apart by >= gap on x or y."""
    if placed.size == 0:
        return np.ones(len(cands), dtype=bool)
    c, p = cands[:, None, :], placed[None, :, :]
    apart = ((c[..., 0] >= p[..., 2] + gap) | (p[..., 0] >= c[..., 2] + gap)
             | (c[..., 1] >= p[..., 3] + gap) | (p[..., 1] >= c[..., 3] + gap))
    return apart.all(axis=1)


def _relation_robust(cands: np.ndarray, anchor: np.ndarray, rel: str, slack: float) -> np.ndarray:
    """(T,) bool: GenEval's rule "A rel B" holds for candidate A boxes vs anchor B box even
    if every box edge moves by ``slack`` px.

    The normalised main component (|o| - 0.1 (dim_A + dim_B)) / ||o|| grows with the main
    offset and shrinks with the perpendicular offset and the box sizes, so the worst case is
    main offset - 2 slack, perpendicular offset + 2 slack, sum of dims + 4 slack.
    """
    axis = 0 if rel in ("left of", "right of") else 1
    sign = -1.0 if rel in ("left of", "above") else 1.0
    centre_a = (cands[:, :2] + cands[:, 2:]) / 2.0
    centre_b = (anchor[:2] + anchor[2:]) / 2.0
    offset = centre_a - centre_b
    dims = (cands[:, 2:] - cands[:, :2]) + (anchor[2:] - anchor[:2])
    main = sign * offset[:, axis] - 2.0 * slack
    perp = np.abs(offset[:, 1 - axis]) + 2.0 * slack
    shrunk = main - POSITION_THRESHOLD * (dims[:, axis] + 4.0 * slack)
    norm = np.hypot(np.maximum(main, 0.0), perp)
    return (main > 0) & (shrunk > 0.5 * norm)


def _free_candidates(rng: np.random.Generator, size: float, world: ShapesWorld) -> np.ndarray:
    lo, hi = world.border, world.image_size - world.border - size
    xy = rng.uniform(lo, hi, size=(_TRIES_PER_OBJECT, 2))
    return np.concatenate([xy, xy + size], axis=1)


def _related_candidates(rng: np.random.Generator, size: float, anchor: np.ndarray, rel: str,
                        world: ShapesWorld) -> np.ndarray | None:
    """Candidate boxes strictly on the ``rel`` side of ``anchor`` (projections disjoint with
    ``min_gap``), perpendicular centre offset at most half the main centre offset."""
    axis = 0 if rel in ("left of", "right of") else 1
    lo, hi = world.border, world.image_size - world.border - size
    if rel in ("left of", "above"):
        main_lo, main_hi = lo, min(hi, anchor[axis] - world.min_gap - size)
    else:
        main_lo, main_hi = max(lo, anchor[axis + 2] + world.min_gap), hi
    if main_hi < main_lo:
        return None
    main = rng.uniform(main_lo, main_hi, size=_TRIES_PER_OBJECT)
    anchor_centre = (anchor[:2] + anchor[2:]) / 2.0
    main_offset = np.abs(main + size / 2.0 - anchor_centre[axis])
    perp = anchor_centre[1 - axis] + rng.uniform(-0.5, 0.5, _TRIES_PER_OBJECT) * main_offset
    perp = perp - size / 2.0
    xy = np.stack([main, perp], axis=1) if axis == 0 else np.stack([perp, main], axis=1)
    boxes = np.concatenate([xy, xy + size], axis=1)
    inside = (perp >= lo) & (perp <= hi)
    return boxes[inside]


def _layout_once(rng: np.random.Generator, sizes: np.ndarray, world: ShapesWorld,
                 relation: tuple[int, int, str] | None) -> np.ndarray | None:
    n = len(sizes)
    order = list(range(n))
    if relation is not None:  # anchor B first, then A relative to it, then the rest
        a, b, _ = relation
        order = [b, a] + [i for i in order if i not in (a, b)]
    boxes = np.zeros((n, 4))
    for k, i in enumerate(order):
        placed = boxes[order[:k]]
        if relation is not None and i == relation[0]:
            cands = _related_candidates(rng, sizes[i], boxes[relation[1]], relation[2], world)
            if cands is None:
                return None
            ok = _relation_robust(cands, boxes[relation[1]], relation[2], _QUANTISATION_SLACK)
        else:
            cands = _free_candidates(rng, sizes[i], world)
            ok = np.ones(len(cands), dtype=bool)
        ok &= _separated(cands, placed, world.min_gap)
        hits = np.flatnonzero(ok)
        if hits.size == 0:
            return None
        boxes[i] = cands[hits[0]]
    return boxes


def _layout(rng: np.random.Generator, n: int, world: ShapesWorld,
            relation: tuple[int, int, str] | None) -> np.ndarray:
    """(n, 4) non-overlapping boxes; retries with a shrinking size cap when crowded."""
    lo, hi = world.object_size
    for attempt in range(_MAX_LAYOUT_ATTEMPTS):
        # Crowded 4-object scenes at 32 px occasionally fail; lower the cap gradually so a
        # layout is always found, which biases only those rare scenes towards small sizes.
        cap = hi - (hi - lo) * min(1.0, attempt / (_MAX_LAYOUT_ATTEMPTS / 2))
        sizes = rng.uniform(lo, cap, size=n) * world.image_size
        boxes = _layout_once(rng, sizes, world, relation)
        if boxes is not None:
            return boxes
    raise RuntimeError(f"no layout for {n} objects (relation={relation}) in {world}")


# --------------------------------------------------------------------------- scenes


@lru_cache(maxsize=256)
def _allowed_colors(world: ShapesWorld, shape: str, exclude_holdout: bool) -> tuple[str, ...]:
    if not exclude_holdout:
        return world.colors
    return tuple(c for c in world.colors if (shape, c) not in world.holdout_pairs)


def _pick_color(rng: np.random.Generator, shape: str, world: ShapesWorld,
                exclude_holdout: bool) -> str:
    allowed = _allowed_colors(world, shape, exclude_holdout)
    return allowed[int(rng.integers(len(allowed)))]


def _objects_for(rng: np.random.Generator, metadata: Mapping[str, Any], world: ShapesWorld,
                 exclude_holdout: bool
                 ) -> tuple[list[tuple[str, str]], tuple[int, int, str] | None]:
    """Expand include clauses (+ distractors) into (shape, colour) objects and the relation
    as (index of A, index of B, relation)."""
    include = metadata["include"]
    objects: list[tuple[str, str]] = []
    first: list[int] = []
    for clause in include:
        if clause["class"] not in world.shapes:
            raise ValueError(f"class {clause['class']!r} is not a shape of this world")
        first.append(len(objects))
        for _ in range(int(clause["count"])):
            color = clause.get("color") or _pick_color(rng, clause["class"], world, exclude_holdout)
            objects.append((clause["class"], color))
    relation = None
    for i, clause in enumerate(include):
        if "position" in clause:
            if clause["count"] != 1 or include[clause["position"][1]]["count"] != 1:
                raise ValueError("position clauses must have count 1, as in GenEval")
            relation = (first[i], first[clause["position"][1]], clause["position"][0])
    if len(objects) > world.max_objects:
        raise ValueError(f"prompt needs {len(objects)} objects > max_objects={world.max_objects}")
    named = {c["class"] for c in include} | {c["class"] for c in metadata.get("exclude", [])}
    others = [s for s in world.shapes if s not in named]
    # Distractors only of unnamed shapes: a second object of a named class would make
    # GenEval's top-`count` choice (and the ground truth) ambiguous.
    while others and len(objects) < world.max_objects and rng.random() < world.distractor_prob:
        shape = others[int(rng.integers(len(others)))]
        objects.append((shape, _pick_color(rng, shape, world, exclude_holdout)))
    return objects, relation


def realize_prompt(rng: np.random.Generator, metadata: Mapping[str, Any], world: ShapesWorld,
                   *, exclude_holdout: bool = False) -> SceneSpec:
    """Lay out a scene that satisfies a GenEval-format record under GenEval's rules.

    Unnamed colours are drawn uniformly (avoiding held-out pairs when ``exclude_holdout``).
    Works for any record of this world, e.g. a prompt-suite line for ground-truth renders.
    """
    if exclude_holdout and uses_holdout(metadata, world):
        raise ValueError(f"prompt uses a held-out combination: {metadata['prompt']!r}")
    objects, relation = _objects_for(rng, metadata, world, exclude_holdout)
    boxes = _layout(rng, len(objects), world, relation)
    specs = tuple(ObjectSpec(shape, color, tuple(float(v) for v in box))
                  for (shape, color), box in zip(objects, boxes))
    return SceneSpec(metadata=copy.deepcopy(dict(metadata)), objects=specs,
                     image_size=world.image_size)


def tag_probabilities(tag_weights: Mapping[str, float] | None) -> np.ndarray:
    """(6,) probabilities over :data:`TAGS`; ``None`` is uniform, missing tags get 0."""
    if tag_weights is None:
        return np.full(len(TAGS), 1.0 / len(TAGS))
    unknown = set(tag_weights) - set(TAGS)
    if unknown:
        raise ValueError(f"unknown tags {sorted(unknown)} in tag_weights; expected {TAGS}")
    w = np.array([float(tag_weights.get(t, 0.0)) for t in TAGS])
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"tag_weights must be finite, >= 0 and not all 0, got {dict(tag_weights)}")
    return w / w.sum()


def sample_scene(rng: np.random.Generator, world: ShapesWorld, *, tag: str | None = None,
                 tag_weights: Mapping[str, float] | None = None,
                 exclude_holdout: bool = False) -> SceneSpec:
    """Draw a tag (from ``tag_weights`` unless ``tag`` is given), a prompt uniformly among
    the world's prompts of that tag, and a layout realising it."""
    if tag is None:
        tag = TAGS[int(rng.choice(len(TAGS), p=tag_probabilities(tag_weights)))]
    pool = _candidates(world, tag, "exclude" if exclude_holdout else "include")
    if not pool:
        raise ValueError(f"the world has no {tag} prompts (exclude_holdout={exclude_holdout})")
    record = pool[int(rng.integers(len(pool)))]
    return realize_prompt(rng, record, world, exclude_holdout=exclude_holdout)
