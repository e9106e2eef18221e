"""A procedural, offline text-to-image world of coloured shapes with GenEval-format prompts.

Every scene is a flat grey canvas with 1-4 axis-aligned shapes (circle, square, triangle,
optionally cross) in named colours, described by a caption in GenEval's exact phrasing and
by a GenEval metadata record (``tag``, ``include``, ``exclude`` for counting only,
``prompt``), so one GenEval-style evaluator can score both real GenEval prompts and this
world ("ShapesEval", see ``/work/shared/research/eval.md`` sections 2 and 3.4).

Design, in short:

* **Palette** (:data:`PALETTE`, RGB uint8) uses GenEval colour names; the default colour set
  is red, orange, yellow, green, blue, purple (pink and brown are available). No black or
  white. The background :data:`BACKGROUND_RGB` is mid grey; every default colour is more
  than 100 RGB units from every other and from the background.
* **Geometry**: every shape has a square bounding box of side ``s``; the circle has
  diameter ``s``, the triangle points up with base ``s`` and height ``s``, the cross has
  arms of thickness ``0.4 s``. ``s`` is uniform in ``object_size`` x ``image_size``
  (default 0.22-0.34, i.e. 7.0-10.9 px at 32, 14.1-21.8 px at 64, 28.2-43.5 px at 128).
  Bounding boxes keep at least ``min_gap`` (2 px) apart and ``border`` (1 px) from the
  image edge, so shapes never overlap and touch no common pixel; each object is one
  8-connected component.
* **Rendering** is anti-aliased: coverage is computed on a ``supersample`` x
  ``supersample`` grid per pixel and box-averaged, vectorised in numpy per object.
* **Image sizes**: any ``image_size >= 32`` divisible by 16 (32, 48, 64, 128, ...); sizes
  and positions scale with it while gaps stay in pixels.
* **Templates** are GenEval's: "a photo of a circle", "a photo of a circle and a square",
  "a photo of three triangles", "a photo of a red circle", "a photo of a circle left of a
  square", "a photo of a red circle and a blue square" (``a``/``an`` by the first letter,
  plural adds "s", or "es" after a final "s"). Extension: ``colored_position=True`` gives
  "a photo of a red circle left of a blue square" with ``color`` in both clauses.
* **Distractors** (objects not named by the prompt) are off by default
  (``distractor_prob=0``) so the caption describes the whole scene. When enabled, they are
  only of shapes that no clause of the prompt names: GenEval takes the top-``count``
  detections per class, so a second object of a named class would make the ground truth
  ambiguous. The total never exceeds ``max_objects`` (4).
* **Position scenes** place A strictly beside B along the stated axis (disjoint
  projections plus ``min_gap``), keep the perpendicular centre offset within half the main
  offset (so the perpendicular relation never holds), and accept a layout only if GenEval's
  margin rule holds even when each box edge moves by 1 px (detector quantisation).
* **Held-out compositions**: ``holdout_pairs`` (shape, colour) never appear in a training
  scene, neither named nor as a free colour; ``holdout_relations`` (A, relation, B) and, with
  ``holdout_converse`` (default), their mirror (B, inverse, A) are never position prompts in
  training. Val/test sample everything uniformly, so held-out combinations appear there.

Ground truth: :func:`sample_scene` returns a :class:`SceneSpec` (metadata + objects with
pixel bounding boxes); :func:`render_scene` draws it. Objects are listed in the order of the
``include`` clauses (each repeated ``count`` times), then distractors.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from argen.data.base import Sample, make_sample, uint8_to_tensor

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]
Metadata = dict[str, Any]

# GenEval colour names. Values are chosen far apart in RGB (and in CIELAB) so that a judge
# that labels each pixel with its nearest palette colour is unambiguous.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 35),
    "orange": (250, 135, 0),
    "yellow": (240, 230, 40),
    "green": (30, 165, 50),
    "blue": (30, 85, 235),
    "purple": (160, 40, 190),
    "pink": (255, 135, 205),
    "brown": (125, 70, 20),
}
BACKGROUND_RGB: tuple[int, int, int] = (128, 128, 128)
BACKGROUND_NAME = "background"
DEFAULT_COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple")

SUPPORTED_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
DEFAULT_SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

TAGS: tuple[str, ...] = (
    "single_object", "two_object", "counting", "colors", "position", "color_attr"
)
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE_RELATION: dict[str, str] = {
    "left of": "right of", "right of": "left of", "above": "below", "below": "above"
}
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
NUMBER_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four"}
POSITION_THRESHOLD = 0.1  # GenEval's ``position_threshold``
CROSS_ARM = 0.4  # cross arm thickness as a fraction of the object side

_MAX_LAYOUT_ATTEMPTS = 100
_TRIES_PER_OBJECT = 64
_QUANTISATION_SLACK = 1.0  # px each box edge may move in a detector's pixel bbox


def with_article(word: str) -> str:
    """GenEval's article rule: "an" before a vowel letter, else "a"."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def plural(word: str) -> str:
    """GenEval's plural rule: "es" after a final "s", else "s"."""
    return f"{word}es" if word.endswith("s") else f"{word}s"


def palette_array(colors: Sequence[str]) -> np.ndarray:
    """(K, 3) uint8 RGB rows for ``colors``, in the given order."""
    return np.array([PALETTE[c] for c in colors], dtype=np.uint8)


def check_image_size(image_size: int) -> int:
    """Return ``image_size`` if it is an int >= 32 divisible by 16, else raise ValueError."""
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool):
        raise ValueError(f"image_size must be an int, got {image_size!r}")
    if image_size < 32 or image_size % 16 != 0:
        raise ValueError(
            f"image_size must be >= 32 and divisible by 16 (e.g. 32, 64, 128), got {image_size}"
        )
    return int(image_size)


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class ObjectSpec:
    """One rendered object; ``bbox`` is (x1, y1, x2, y2) in continuous pixel coordinates.

    Pixel column ``i`` spans ``[i, i + 1)``; y points down. A detector's integer bbox of
    touched pixels is ``(floor(x1), floor(y1), ceil(x2), ceil(y2))``.
    """

    shape: str
    color: str
    bbox: Box

    @property
    def size(self) -> float:
        """Side of the (square) bounding box in pixels."""
        return self.bbox[2] - self.bbox[0]

    @property
    def center(self) -> tuple[float, float]:
        """Bounding-box centre (x, y); this is what GenEval's position rule uses."""
        x1, y1, x2, y2 = self.bbox
        return ((x1 + x2) / 2.0, (y1 + y2) / 2.0)

    @property
    def centroid(self) -> tuple[float, float]:
        """Area centroid (x, y); differs from :attr:`center` only for the triangle."""
        cx, cy = self.center
        if self.shape == "triangle":  # apex at y1, base at y2
            return (cx, self.bbox[1] + 2.0 * self.size / 3.0)
        return (cx, cy)

    def scaled(self, factor: float) -> ObjectSpec:
        """The same object on a canvas ``factor`` times larger."""
        return ObjectSpec(self.shape, self.color, tuple(v * factor for v in self.bbox))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with class, color, bbox and centroid (JSON-serialisable)."""
        return {"class": self.shape, "color": self.color, "bbox": list(self.bbox),
                "centroid": list(self.centroid)}


@dataclass(frozen=True)
class SceneSpec:
    """A prompt (GenEval record) together with its ground-truth layout at ``image_size``."""

    metadata: Metadata
    objects: tuple[ObjectSpec, ...]
    image_size: int

    @property
    def tag(self) -> str:
        return self.metadata["tag"]

    @property
    def prompt(self) -> str:
        return self.metadata["prompt"]

    def metadata_json(self) -> str:
        """The record as one JSON line, formatted like GenEval's evaluation_metadata.jsonl."""
        return json.dumps(self.metadata)


@dataclass(frozen=True)
class ShapesWorld:
    """Everything that defines the world's distribution (hashable, so lookups are cached).

    ``object_size`` is the (min, max) side as a fraction of ``image_size``; ``min_gap`` and
    ``border`` are in output pixels. ``holdout_pairs`` holds (shape, colour) tuples,
    ``holdout_relations`` (shapeA, relation, shapeB) tuples.
    """

    shapes: tuple[str, ...] = DEFAULT_SHAPES
    colors: tuple[str, ...] = DEFAULT_COLORS
    image_size: int = 32
    object_size: tuple[float, float] = (0.22, 0.34)
    min_gap: float = 2.0
    border: float = 1.0
    max_objects: int = 4
    distractor_prob: float = 0.0
    colored_position: bool = False
    holdout_pairs: frozenset[tuple[str, str]] = frozenset()
    holdout_relations: frozenset[tuple[str, str, str]] = frozenset()
    holdout_converse: bool = True
    held_relations: frozenset[tuple[str, str, str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Accept lists (e.g. from Hydra) and store hashable tuples / frozensets.
        set_ = object.__setattr__
        set_(self, "shapes", tuple(self.shapes))
        set_(self, "colors", tuple(self.colors))
        set_(self, "object_size", tuple(float(v) for v in self.object_size))
        set_(self, "holdout_pairs", frozenset(tuple(p) for p in self.holdout_pairs))
        set_(self, "holdout_relations", frozenset(tuple(r) for r in self.holdout_relations))
        set_(self, "image_size", check_image_size(self.image_size))
        self._validate()
        held = set(self.holdout_relations)
        if self.holdout_converse:
            held |= {(b, INVERSE_RELATION[rel], a) for a, rel, b in self.holdout_relations}
        set_(self, "held_relations", frozenset(held))

    def _validate(self) -> None:
        _check_names("shape", self.shapes, SUPPORTED_SHAPES)
        _check_names("color", self.colors, tuple(PALETTE))
        lo, hi = self.object_size
        if not 0.05 <= lo <= hi <= 0.45:
            raise ValueError(
                f"object_size must satisfy 0.05 <= min <= max <= 0.45, got {self.object_size}"
            )
        if self.min_gap < 2.0 or self.border < 0.0:
            raise ValueError(
                f"min_gap must be >= 2 px and border >= 0, got {self.min_gap}, {self.border}"
            )
        if not 1 <= self.max_objects <= 4:
            raise ValueError(f"max_objects must be in 1..4, got {self.max_objects}")
        if not 0.0 <= self.distractor_prob < 1.0:
            raise ValueError(f"distractor_prob must be in [0, 1), got {self.distractor_prob}")
        for pair in self.holdout_pairs:
            if len(pair) != 2 or pair[0] not in self.shapes or pair[1] not in self.colors:
                raise ValueError(f"holdout pair {pair} must be [shape, colour] of this world")
        for shape in self.shapes:
            if all((shape, c) in self.holdout_pairs for c in self.colors):
                raise ValueError(f"every colour of {shape!r} is held out; training cannot draw it")
        for rel in self.holdout_relations:
            if (len(rel) != 3 or rel[0] not in self.shapes or rel[2] not in self.shapes
                    or rel[1] not in RELATIONS or rel[0] == rel[2]):
                raise ValueError(
                    f"holdout relation {rel} must be [shapeA, relation, shapeB], A != B"
                )

    @property
    def counts(self) -> tuple[int, ...]:
        """Counting prompt numbers: GenEval's 2..4, capped by ``max_objects``."""
        return tuple(n for n in NUMBER_WORDS if n <= self.max_objects)


def _check_names(kind: str, names: Sequence[str], known: Sequence[str]) -> None:
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{kind}s must be a non-empty list without repeats, got {list(names)}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {kind}(s) {unknown}; supported: {list(known)}")


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
) -> list[Metadata]:
    """A GenEval-format prompt suite for the shapes world, seeded and de-duplicated.

    Mirrors GenEval's ``create_prompts.py``: single_object draws ``min(n, #shapes)``
    distinct shapes; every other tag draws ``n_per_tag`` records uniformly with replacement;
    then exact duplicates of a whole record are dropped, keeping the first. Because this
    world is small, some tags end with fewer than ``n_per_tag`` prompts (e.g. 3 single_object
    and 6 two_object prompts with the default 3 shapes).

    ``holdout_mode``: ``"include"`` (all prompts), ``"exclude"`` (none that use a held-out
    pair/relation) or ``"only"`` (only those that do; tags without any, such as counting,
    are skipped with a log line). Returns a list of metadata dicts.
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
    return unique


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


# --------------------------------------------------------------------------- rendering


def _inside(shape: str, xs: np.ndarray, ys: np.ndarray, box: Box) -> np.ndarray:
    """Bool mask of sample points (xs (1, W), ys (H, 1)) inside the shape with bbox ``box``."""
    x1, y1, x2, y2 = box
    cx, cy, half = (x1 + x2) / 2.0, (y1 + y2) / 2.0, (x2 - x1) / 2.0
    dx, dy = np.abs(xs - cx), np.abs(ys - cy)
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        return (dx <= half) & (dy <= half)
    if shape == "triangle":  # apex (cx, y1), base on y2: half-width grows linearly downwards
        return (ys >= y1) & (ys <= y2) & (dx <= half * (ys - y1) / (y2 - y1))
    if shape == "cross":
        arm = CROSS_ARM * half
        return ((dx <= half) & (dy <= arm)) | ((dx <= arm) & (dy <= half))
    raise ValueError(f"unknown shape {shape!r}")


def _coverage(shape: str, box: Box, image_size: int, supersample: int
              ) -> tuple[int, int, np.ndarray]:
    """(row0, col0, (h, w) coverage in [0, 1]) over the pixels touched by the bbox."""
    c0, r0 = max(int(math.floor(box[0])), 0), max(int(math.floor(box[1])), 0)
    c1, r1 = min(int(math.ceil(box[2])), image_size), min(int(math.ceil(box[3])), image_size)
    offsets = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(c0, c1)[:, None] + offsets).reshape(1, -1)
    ys = (np.arange(r0, r1)[:, None] + offsets).reshape(-1, 1)
    mask = _inside(shape, xs, ys, box).astype(np.float32)
    cov = mask.reshape(r1 - r0, supersample, c1 - c0, supersample).mean(axis=(1, 3))
    return r0, c0, cov


def render_scene(spec: SceneSpec, image_size: int | None = None, *, supersample: int = 4
                 ) -> tuple[np.ndarray, list[ObjectSpec]]:
    """Draw ``spec`` -> ((H, W, 3) uint8 RGB, objects with bboxes at ``image_size``).

    ``image_size`` defaults to the size the scene was laid out for; a larger size scales
    the layout (gaps grow with it). Objects never overlap, so each one is blended with the
    background independently: pixel = bg + coverage * (colour - bg).
    """
    size = spec.image_size if image_size is None else check_image_size(image_size)
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    factor = size / spec.image_size
    objects = [o.scaled(factor) if factor != 1 else o for o in spec.objects]
    background = np.asarray(BACKGROUND_RGB, dtype=np.float32)
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = background
    for obj in objects:
        r0, c0, cov = _coverage(obj.shape, obj.bbox, size, supersample)
        delta = np.asarray(PALETTE[obj.color], dtype=np.float32) - background
        canvas[r0:r0 + cov.shape[0], c0:c0 + cov.shape[1]] += cov[..., None] * delta
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, objects


# --------------------------------------------------------------------------- dataset


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of ``split``: a pure function of its arguments, so
    splits never share random streams and items do not depend on access order or worker."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS[split], int(index)]))


class ShapesDataset(Dataset):
    """``size`` procedurally generated shapes scenes of one split.

    Items follow :mod:`argen.data.base`: ``image`` (3, H, W) float in [-1, 1], ``label`` -1,
    ``caption`` the GenEval-style prompt, ``metadata`` its GenEval record as JSON, ``index``.
    Item ``i`` is a deterministic function of (``seed``, ``split``, ``i``) and the world
    settings. Training excludes held-out pairs / relations; val and test do not.
    Use :meth:`scene` / :meth:`render` for the ground-truth objects.
    """

    def __init__(
        self,
        *,
        split: str = "train",
        size: int = 10_000,
        image_size: int = 32,
        seed: int = 0,
        tag_weights: Mapping[str, float] | None = None,
        shapes: Sequence[str] = DEFAULT_SHAPES,
        colors: Sequence[str] = DEFAULT_COLORS,
        holdout_pairs: Iterable[Sequence[str]] = (),
        holdout_relations: Iterable[Sequence[str]] = (),
        holdout_converse: bool = True,
        colored_position: bool = False,
        distractor_prob: float = 0.0,
        max_objects: int = 4,
        object_size: tuple[float, float] = (0.22, 0.34),
        min_gap: float = 2.0,
        supersample: int = 4,
        cache: bool = False,
    ) -> None:
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if size < 0 or seed < 0:
            raise ValueError(f"size and seed must be >= 0, got {size}, {seed}")
        self.world = ShapesWorld(
            shapes=tuple(shapes), colors=tuple(colors), image_size=image_size,
            object_size=tuple(object_size), min_gap=min_gap, max_objects=max_objects,
            distractor_prob=distractor_prob, colored_position=colored_position,
            holdout_pairs=frozenset(tuple(p) for p in holdout_pairs),
            holdout_relations=frozenset(tuple(r) for r in holdout_relations),
            holdout_converse=holdout_converse,
        )
        self.split, self.size, self.seed = split, int(size), int(seed)
        self.image_size, self.supersample = self.world.image_size, int(supersample)
        self.exclude_holdout = split == "train"
        self.tag_weights = {t: float(p) for t, p in zip(TAGS, tag_probabilities(tag_weights))}
        mode = "exclude" if self.exclude_holdout else "include"
        for tag, p in self.tag_weights.items():
            if p > 0 and not _candidates(self.world, tag, mode):
                raise ValueError(f"tag {tag!r} has weight {p} but no prompt in this world")
        self._cache: dict[int, Sample] | None = {} if cache else None
        logger.debug("ShapesDataset(%s, size=%d, seed=%d, %s)", split, size, seed, self.world)

    def __len__(self) -> int:
        return self.size

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        return index

    def scene(self, index: int) -> SceneSpec:
        """The ground-truth :class:`SceneSpec` of item ``index``."""
        index = self._check_index(index)
        rng = scene_rng(self.seed, self.split, index)
        return sample_scene(rng, self.world, tag_weights=self.tag_weights,
                            exclude_holdout=self.exclude_holdout)

    def render(self, index: int) -> tuple[np.ndarray, list[ObjectSpec], SceneSpec]:
        """Item ``index`` as ((H, W, 3) uint8, ground-truth objects, scene)."""
        spec = self.scene(index)
        image, objects = render_scene(spec, supersample=self.supersample)
        return image, objects, spec

    def __getitem__(self, index: int) -> Sample:
        index = self._check_index(index)
        if self._cache is not None and index in self._cache:
            return dict(self._cache[index])
        image, _, spec = self.render(index)
        sample = make_sample(uint8_to_tensor(image), index=index, label=-1,
                             caption=spec.prompt, metadata=spec.metadata_json())
        if self._cache is not None:
            self._cache[index] = sample
        return dict(sample) if self._cache is not None else sample
