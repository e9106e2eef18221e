"""The shapes world as a map-style dataset (:class:`ShapesDataset`)."""

from __future__ import annotations

import logging
from typing import Iterable, Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset

from argen.data.base import Sample, make_sample, uint8_to_tensor
from argen.data.shapes.prompts import _candidates, dense_caption
from argen.data.shapes.render import render_scene
from argen.data.shapes.scenes import sample_scene, tag_probabilities
from argen.data.shapes.world import (
    DEFAULT_COLORS,
    DEFAULT_SHAPES,
    SPLITS,
    TAGS,
    ObjectSpec,
    SceneSpec,
    ShapesWorld,
)

logger = logging.getLogger(__name__)


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

    ``dense_captions`` (0..1): the share of items whose caption names every object's colour and shape
    (:func:`~argen.data.shapes.prompts.dense_caption`) instead of the GenEval prompt; ``metadata`` keeps
    the GenEval record. Which items is a pure function of (``seed``, ``split``, index).
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
        dense_captions: float = 0.0,
    ) -> None:
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if size < 0 or seed < 0:
            raise ValueError(f"size and seed must be >= 0, got {size}, {seed}")
        if not 0.0 <= float(dense_captions) <= 1.0:
            raise ValueError(f"dense_captions is a share of the items, in [0, 1]; got {dense_captions}")
        self.dense_captions = float(dense_captions)
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

    def caption(self, index: int, spec: SceneSpec | None = None) -> str:
        """Item ``index``'s training caption: its GenEval prompt, or with probability ``dense_captions``
        the descriptive caption of its scene."""
        spec = self.scene(index) if spec is None else spec
        if self.dense_captions <= 0.0:
            return spec.prompt
        draw = np.random.default_rng(np.random.SeedSequence([self.seed, SPLITS[self.split], int(index), 1])).random()
        if draw >= self.dense_captions:
            return spec.prompt
        return dense_caption(spec.metadata, [(o.shape, o.color) for o in spec.objects])

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
                             caption=self.caption(index, spec), metadata=spec.metadata_json())
        if self._cache is not None:
            self._cache[index] = sample
        return dict(sample) if self._cache is not None else sample


def world_from_config(config: Mapping[str, object]) -> ShapesWorld | None:
    """The world of a ShapesDataset config (``{"_target_": ...ShapesDataset, ...}``, e.g. a code cache's
    recorded training split), or None when the config is not a shapes dataset."""
    if not str(config.get("_target_", "")).endswith("ShapesDataset"):
        return None
    kwargs = {k: v for k, v in config.items() if k != "_target_"}
    return ShapesDataset(**{**kwargs, "size": 0}).world  # type: ignore[arg-type]
