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

Modules: :mod:`~argen.data.shapes.world` (constants, text helpers, specs),
:mod:`~argen.data.shapes.prompts` (GenEval records and prompt suites),
:mod:`~argen.data.shapes.scenes` (layouts and scenes), :mod:`~argen.data.shapes.render`
(rendering) and :mod:`~argen.data.shapes.dataset` (:class:`ShapesDataset`); every public
name is re-exported here.
"""

from __future__ import annotations

from argen.data.shapes.dataset import ShapesDataset, scene_rng, world_from_config
from argen.data.shapes.prompts import (
    enumerate_prompts,
    make_prompt_suite,
    read_prompt_suite,
    uses_holdout,
    write_prompt_suite,
)
from argen.data.shapes.render import render_scene
from argen.data.shapes.scenes import (
    realize_prompt,
    sample_scene,
    tag_probabilities,
)
from argen.data.shapes.world import (
    BACKGROUND_NAME,
    BACKGROUND_RGB,
    CROSS_ARM,
    DEFAULT_COLORS,
    DEFAULT_SHAPES,
    INVERSE_RELATION,
    NUMBER_WORDS,
    PALETTE,
    POSITION_THRESHOLD,
    RELATIONS,
    SPLITS,
    SUPPORTED_SHAPES,
    TAGS,
    Box,
    Metadata,
    ObjectSpec,
    SceneSpec,
    ShapesWorld,
    check_image_size,
    palette_array,
    plural,
    with_article,
)

__all__ = [
    "BACKGROUND_NAME",
    "BACKGROUND_RGB",
    "CROSS_ARM",
    "DEFAULT_COLORS",
    "DEFAULT_SHAPES",
    "INVERSE_RELATION",
    "NUMBER_WORDS",
    "PALETTE",
    "POSITION_THRESHOLD",
    "RELATIONS",
    "SPLITS",
    "SUPPORTED_SHAPES",
    "TAGS",
    "Box",
    "Metadata",
    "ObjectSpec",
    "SceneSpec",
    "ShapesDataset",
    "ShapesWorld",
    "check_image_size",
    "enumerate_prompts",
    "make_prompt_suite",
    "palette_array",
    "plural",
    "read_prompt_suite",
    "realize_prompt",
    "render_scene",
    "sample_scene",
    "scene_rng",
    "tag_probabilities",
    "uses_holdout",
    "with_article",
    "world_from_config",
    "write_prompt_suite",
]
