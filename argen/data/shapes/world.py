"""Constants, text helpers and the ObjectSpec / SceneSpec / ShapesWorld dataclasses."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

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
