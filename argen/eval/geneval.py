"""GenEval's prompt format, folder layout and scoring rules, run on any :class:`Detector`.

GenEval (Ghosh, Hajishirzi, Schmidt, NeurIPS 2023 D&B; github.com/djghosh13/geneval, MIT)
scores a text-to-image model by detecting objects in its samples and checking them against
per-prompt metadata. This module re-implements, from the description in
``/work/shared/research/eval.md`` section 2, everything that does not need the official
detector:

* :func:`read_metadata` reads and validates ``evaluation_metadata.jsonl`` (eval.md 2.2);
* :func:`write_sample_folder` / :func:`iter_sample_folder` write and read the generation
  layout ``<root>/<%05d index>/metadata.jsonl`` + ``samples/<%04d>.png`` (eval.md 2.3);
* :func:`evaluate_image` applies the detection filtering (eval.md 2.4), the position rule
  (:func:`relative_position`, eval.md 2.6) and the per-image correctness rules (eval.md 2.7)
  to a list of :class:`~argen.eval.detection.Detection`;
* :func:`score_results` summarises per-image results as ``summary_scores.py`` does (per-task
  accuracy, overall = unweighted mean of the task scores, % correct images / prompts) and adds
  a bootstrap 95% CI of the overall score resampled over prompts;
* :func:`evaluate_folder` runs a detector over a sample folder and scores it.

Colour: GenEval classifies each checked object's colour with CLIP (eval.md 2.5). Here the
colour comes from ``Detection.color``; a detector that does not classify colour returns
``None``, which never matches a requested colour.

Running the official detector (Mask2Former Swin-S + CLIP ViT-L-14)
------------------------------------------------------------------
The official ``evaluation/evaluate_images.py`` imports mmdet 2.x and open_clip and asserts a
CUDA device, so it is not imported here and must run on a GPU machine in GenEval's own
environment. This module has not run it; the steps, from GenEval's README, are:

1. ``git clone https://github.com/djghosh13/geneval.git && cd geneval``;
   ``conda env create -f environment.yml && conda activate geneval``;
   ``./evaluation/download_models.sh <DETECTOR_DIR>/``; install mmdetection from its ``2.x``
   branch (``pip install -v -e .``).
2. Write samples with :func:`write_sample_folder` (4 images per prompt, the 553 official
   prompts) and copy the folder to that machine.
3. Run the argv from :func:`official_command` (see :data:`OFFICIAL_GENEVAL_COMMAND`).
4. Summarise ``results.jsonl`` with :func:`read_official_results`, which applies the same
   :func:`score_results` as the in-process path, so both report the same statistics.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from argen.core.progress import progress as progress_bar
from argen.eval.detection import Box, Detection, Detector

logger = logging.getLogger(__name__)

Metadata = dict[str, Any]

TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
# The 10 colour names GenEval's CLIP step chooses among (eval.md 2.2 / 2.5).
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
IMAGES_PER_PROMPT = 4  # GenEval's --n_samples default (eval.md 2.3)
METADATA_FILENAME = "metadata.jsonl"
SAMPLES_DIRNAME = "samples"
GRID_FILENAME = "grid.png"
_DIGITS = re.compile(r"[0-9]+")
_SAMPLE_NAME = re.compile(r"[0-9]+\.png")

OFFICIAL_GENEVAL_COMMAND = (
    'python evaluation/evaluate_images.py "<IMAGE_FOLDER>" --outfile "<RESULTS_FOLDER>/results.jsonl" '
    '--model-path "<OBJECT_DETECTOR_FOLDER>"'
)
"""The official scoring command, run from the GenEval checkout in its conda environment on a CUDA
machine; ``<OBJECT_DETECTOR_FOLDER>`` holds the Mask2Former ``.pth`` that
``evaluation/download_models.sh`` fetched. ``python evaluation/summary_scores.py results.jsonl``
prints the official summary; :func:`read_official_results` computes the same numbers here."""


# --------------------------------------------------------------------------- metadata


def _check_clause(clause: Any, where: str, position_limit: int | None) -> None:
    """Validate one include/exclude clause; ``position_limit`` is the clause index (include only)."""
    if not isinstance(clause, dict):
        raise ValueError(f"{where}: clause must be an object, got {clause!r}")
    if not isinstance(clause.get("class"), str) or not clause["class"]:
        raise ValueError(f"{where}: clause needs a non-empty string 'class'")
    count = clause.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"{where}: clause 'count' must be an integer >= 1, got {count!r}")
    if "color" in clause and (not isinstance(clause["color"], str) or not clause["color"]):
        raise ValueError(f"{where}: clause 'color' must be a non-empty string")
    if "position" not in clause:
        return
    if position_limit is None:
        raise ValueError(f"{where}: 'position' is only allowed in include clauses")
    pos = clause["position"]
    if not isinstance(pos, (list, tuple)) or len(pos) != 2:
        raise ValueError(f"{where}: 'position' must be [relation, clause index], got {pos!r}")
    rel, idx = pos
    if rel not in RELATIONS:
        raise ValueError(f"{where}: unknown relation {rel!r} (expected one of {RELATIONS})")
    # The referenced group must already have been evaluated (GenEval walks clauses in order).
    if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < position_limit:
        raise ValueError(f"{where}: position index {idx!r} must refer to an earlier clause (< {position_limit})")


def validate_metadata(metadata: Any) -> None:
    """Raise ValueError if ``metadata`` is not a GenEval record (eval.md 2.2).

    Required: ``tag`` in :data:`TAGS`, ``include`` a non-empty list of clauses ``{class, count,
    color?, position?: [relation, earlier clause index]}``, ``prompt`` a string; optional
    ``exclude``, a list of ``{class, count}`` clauses. Extra keys are allowed.
    """
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a JSON object, got {type(metadata).__name__}")
    if metadata.get("tag") not in TAGS:
        raise ValueError(f"unknown tag {metadata.get('tag')!r} (expected one of {TAGS})")
    if not isinstance(metadata.get("prompt"), str):
        raise ValueError("metadata needs a string 'prompt'")
    include = metadata.get("include")
    if not isinstance(include, list) or not include:
        raise ValueError("'include' must be a non-empty list of clauses")
    for i, clause in enumerate(include):
        _check_clause(clause, f"include[{i}]", position_limit=i)
    exclude = metadata.get("exclude", [])
    if not isinstance(exclude, list):
        raise ValueError("'exclude' must be a list of clauses")
    for i, clause in enumerate(exclude):
        _check_clause(clause, f"exclude[{i}]", position_limit=None)


def read_metadata(path: str | Path) -> list[Metadata]:
    """Read GenEval's ``evaluation_metadata.jsonl``: one validated record per non-blank line.

    The list index is the prompt index used by the folder layout. Raises ValueError naming
    ``path`` and the 1-based line number for invalid JSON or an invalid record.
    """
    records: list[Metadata] = []
    for where, record in _jsonl(path):
        try:
            validate_metadata(record)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        records.append(record)
    return records


def _jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(``path:line``, parsed object) for every non-blank line; bad JSON names its line."""
    path = Path(path)
    with path.open(encoding="utf-8") as fp:
        for lineno, line in enumerate(fp, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except ValueError as err:  # json.JSONDecodeError is a ValueError
                raise ValueError(f"{path}:{lineno}: {err}") from err


# --------------------------------------------------------------------------- folder layout


def _check_image(image: Any, k: int) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image {k} must be an (H, W, 3) uint8 array, got {array.dtype} {array.shape}")
    return array


def _grid(images: Sequence[np.ndarray]) -> np.ndarray:
    """Tile equal-sized (H, W, 3) images into a ceil(sqrt(n))-column grid, black-padded."""
    if len({im.shape for im in images}) != 1:
        raise ValueError("grid=True needs images of one size")
    h, w, _ = images[0].shape
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    out = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        out[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    return out


def write_sample_folder(root: str | Path, index: int, metadata: Metadata, images: Sequence[np.ndarray],
                        grid: bool = False) -> Path:
    """Write one prompt's samples in GenEval's layout (eval.md 2.3) and return the prompt folder.

    ``<root>/<index:05d>/metadata.jsonl`` gets ``metadata`` as one JSON line and
    ``samples/<k:04d>.png`` the k-th (H, W, 3) uint8 RGB image; ``grid=True`` adds ``grid.png``.
    Sample PNGs left over from an earlier write (names the scorer would read but this call does
    not write) are removed, since the scorer would otherwise count them.
    """
    validate_metadata(metadata)
    if index < 0:
        raise ValueError(f"prompt index must be >= 0, got {index}")
    arrays = [_check_image(im, k) for k, im in enumerate(images)]
    folder = Path(root) / f"{index:05d}"
    samples = folder / SAMPLES_DIRNAME
    samples.mkdir(parents=True, exist_ok=True)
    (folder / METADATA_FILENAME).write_text(json.dumps(metadata) + "\n", encoding="utf-8")
    names = {f"{k:04d}.png" for k in range(len(arrays))}
    for stale in samples.iterdir():
        if _SAMPLE_NAME.fullmatch(stale.name) and stale.name not in names and stale.is_file():
            logger.info("removing stale sample %s", stale)
            stale.unlink()
    for k, array in enumerate(arrays):
        Image.fromarray(array).save(samples / f"{k:04d}.png")
    if grid and arrays:
        Image.fromarray(_grid(arrays)).save(folder / GRID_FILENAME)
    return folder


def _sample_key(path: Path) -> tuple[int, str]:
    return int(path.name[:-4]), path.name


def iter_sample_folder(root: str | Path) -> Iterator[tuple[int, Metadata, list[Path]]]:
    """Yield ``(prompt index, metadata, sample PNG paths)`` for each prompt folder under ``root``.

    Reads what the official scorer reads (eval.md 2.3): sub-folders whose name is all digits, and
    in their ``samples/`` the files named ``<digits>.png``; both sorted numerically. Raises
    ValueError naming the file when a prompt folder's ``metadata.jsonl`` is missing or invalid.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    folders = [p for p in root.iterdir() if p.is_dir() and _DIGITS.fullmatch(p.name)]
    for folder in sorted(folders, key=lambda p: (int(p.name), p.name)):
        meta_path = folder / METADATA_FILENAME
        try:
            metadata = json.loads(meta_path.read_text(encoding="utf-8"))
            validate_metadata(metadata)
        except (OSError, ValueError) as err:
            raise ValueError(f"{meta_path}: {err}") from err
        samples = folder / SAMPLES_DIRNAME
        paths = [p for p in samples.iterdir() if p.is_file() and _SAMPLE_NAME.fullmatch(p.name)] \
            if samples.is_dir() else []
        if not paths:
            logger.warning("prompt folder %s has no samples", folder)
        yield int(folder.name), metadata, sorted(paths, key=_sample_key)


# --------------------------------------------------------------------------- per-image rules


@dataclass
class ScoringOptions:
    """GenEval's ``evaluate_images.py`` defaults (eval.md 2.4); official ``--options`` names in brackets.

    threshold [threshold]: keep detections with score > this; counting_threshold
    [counting_threshold]: the same for tag "counting"; max_objects [max_objects]: per class;
    nms_threshold [max_overlap]: 1.0 disables NMS, below 1 a same-class box whose IoU with a
    kept higher-scoring box is >= this is dropped; position_threshold [position_threshold]:
    the margin of :func:`relative_position`.
    """

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    nms_threshold: float = 1.0
    position_threshold: float = 0.1

    def confidence_threshold(self, tag: str) -> float:
        return self.counting_threshold if tag == "counting" else self.threshold

    def official_options(self) -> list[str]:
        """``key=value`` strings for the official ``--options`` flag, only where they differ from default."""
        names = {"nms_threshold": "max_overlap"}
        default = ScoringOptions()
        return [f"{names.get(f.name, f.name)}={getattr(self, f.name)}" for f in fields(self)
                if getattr(self, f.name) != getattr(default, f.name)]


def box_iou(box_a: Box, box_b: Box) -> float:
    """IoU of two (x1, y1, x2, y2) boxes with GenEval's inclusive-pixel convention (side = x2 - x1 + 1)."""
    def area(b: Sequence[float]) -> float:
        return max(b[2] - b[0] + 1, 0) * max(b[3] - b[1] + 1, 0)

    inter = area((max(box_a[0], box_b[0]), max(box_a[1], box_b[1]), min(box_a[2], box_b[2]), min(box_a[3], box_b[3])))
    union = area(box_a) + area(box_b) - inter
    return inter / union if union else 0.0


def filter_detections(detections: Iterable[Detection], tag: str,
                      options: ScoringOptions | None = None) -> dict[str, list[Detection]]:
    """Per class: sort by score (descending), keep score > threshold, at most max_objects, then NMS.

    Same order of steps as GenEval's ``evaluate_image`` (eval.md 2.4). Ties in score keep the
    detector's order (Python's sort is stable). Classes with no survivor are absent.
    """
    options = options or ScoringOptions()
    cutoff = options.confidence_threshold(tag)
    by_class: dict[str, list[Detection]] = {}
    for det in detections:
        by_class.setdefault(det.label, []).append(det)
    kept: dict[str, list[Detection]] = {}
    for label, dets in by_class.items():
        queue = [d for d in sorted(dets, key=lambda d: -d.score) if d.score > cutoff][: options.max_objects]
        survivors: list[Detection] = []
        while queue:
            best = queue.pop(0)
            survivors.append(best)
            if options.nms_threshold < 1.0:
                queue = [d for d in queue if box_iou(best.box, d.box) < options.nms_threshold]
        if survivors:
            kept[label] = survivors
    return kept


def relative_position(box_a: Box, box_b: Box, margin: float = 0.1) -> set[str]:
    """Relations of box A to box B (subset of :data:`RELATIONS`), GenEval's rule (eval.md 2.6).

    Boxes are (x1, y1, x2, y2), y down. o = centre_A - centre_B; per axis o' = sign(o) *
    max(|o| - margin * (dim_A + dim_B), 0); no relation if every |o'| < 1e-3; otherwise
    (dx, dy) = o' / ||o|| (the unshrunk offset) and "left of" if dx < -0.5, "right of" if
    dx > 0.5, "above" if dy < -0.5, "below" if dy > 0.5 (diagonals can give two).
    """
    a = np.asarray(box_a, dtype=np.float64)[:4]
    b = np.asarray(box_b, dtype=np.float64)[:4]
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    dims = np.abs(a[2:] - a[:2]) + np.abs(b[2:] - b[:2])
    shrunk = np.sign(offset) * np.maximum(np.abs(offset) - margin * dims, 0.0)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def _colour_failure(clause: Mapping[str, Any], found: list[Detection]) -> str | None:
    """The colour check of eval.md 2.7: at least ``count`` of the top-``count`` detections match."""
    colors = [d.color for d in found]
    n_match = colors.count(clause["color"])
    if n_match >= clause["count"]:
        return None
    seen = ", ".join(f"{colors.count(c)} {c or 'unknown'}" for c in dict.fromkeys(colors))
    return (f"expected {clause['color']} {clause['class']} >= {clause['count']}, "
            f"found {n_match} {clause['color']} ({seen})")


def _position_failure(clause: Mapping[str, Any], found: list[Detection], include: Sequence[Mapping[str, Any]],
                      groups: list[list[Detection] | None], margin: float) -> str | None:
    """The position check of eval.md 2.6/2.7: the relation holds for every (A, target) pair."""
    rel, target_idx = clause["position"]
    target_name = include[target_idx]["class"]
    targets = groups[target_idx]
    if targets is None:
        # GenEval: a failed clause leaves no group, so anything positioned against it fails.
        return f"no target for {clause['class']} to be {rel} {target_name} (clause {target_idx} failed)"
    for det in found:
        for target in targets:
            found_rels = relative_position(det.box, target.box, margin)
            if rel not in found_rels:
                return (f"expected {clause['class']} {rel} {target_name}, found "
                        f"{' and '.join(sorted(found_rels)) or 'no relation'}")
    return None


def _include_failure(clause: Mapping[str, Any], kept: Mapping[str, list[Detection]],
                     include: Sequence[Mapping[str, Any]], groups: list[list[Detection] | None],
                     margin: float) -> tuple[list[Detection] | None, str | None]:
    """Evaluate one include clause: (matched group or None, failure reason or None)."""
    found = kept.get(clause["class"], [])[: clause["count"]]
    if len(found) < clause["count"]:
        return None, f"expected {clause['class']} >= {clause['count']}, found {len(found)}"
    if "color" in clause:
        reason = _colour_failure(clause, found)
        if reason:
            return None, reason
    if "position" in clause:
        reason = _position_failure(clause, found, include, groups, margin)
        if reason:
            return None, reason
    return found, None


def evaluate_image(metadata: Metadata, detections: Iterable[Detection],
                   options: ScoringOptions | None = None) -> tuple[bool, str]:
    """GenEval's per-image verdict (eval.md 2.7) from raw detections of every class.

    Detections are filtered with :func:`filter_detections` (threshold by tag). Include clauses
    (AND) take the top-``count`` detections of their class and check count, colour and position
    in order; exclude clauses fail if >= ``count`` detections of the class survive. Returns
    ``(correct, reason)`` where reason joins one line per failure ("" when correct).
    """
    options = options or ScoringOptions()
    validate_metadata(metadata)
    kept = filter_detections(detections, metadata["tag"], options)
    include = metadata["include"]
    groups: list[list[Detection] | None] = []
    reasons: list[str] = []
    for clause in include:
        group, reason = _include_failure(clause, kept, include, groups, options.position_threshold)
        groups.append(group)
        if reason:
            reasons.append(reason)
    for clause in metadata.get("exclude", []):
        n = len(kept.get(clause["class"], []))
        if n >= clause["count"]:
            reasons.append(f"expected {clause['class']} < {clause['count']}, found {n}")
    return not reasons, "\n".join(reasons)


# --------------------------------------------------------------------------- summary


@dataclass
class GenEvalReport:
    """Summary of per-image GenEval results (``summary_scores.py`` plus a bootstrap CI).

    task_scores: tag -> fraction of that task's images judged correct, in [0, 1];
    overall: unweighted mean of the task scores present (GenEval's headline when n_tasks == 6);
    missing_tasks: the six official tags with no images; task_counts: tag -> {images,
    correct_images, prompts, correct_prompts}; image_accuracy / prompt_accuracy: "% correct
    images" / "% correct prompts" as fractions (a prompt is correct if any of its images is);
    ci_low / ci_high: bootstrap percentile interval of overall, resampling prompts within each
    task (nan when n_boot == 0); task_ci: tag -> [low, high], the same bootstrap's interval of that
    task's score.
    """

    overall: float
    task_scores: dict[str, float]
    n_tasks: int
    missing_tasks: list[str]
    task_counts: dict[str, dict[str, int]]
    image_accuracy: float
    prompt_accuracy: float
    n_images: int
    n_prompts: int
    ci_low: float
    ci_high: float
    confidence: float = 0.95
    n_boot: int = 1000
    seed: int = 0
    notes: list[str] = field(default_factory=list)
    task_ci: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A multi-line text summary in the spirit of ``summary_scores.py``."""
        lines = [f"images {self.n_images}, prompts {self.n_prompts}",
                 f"% correct images: {self.image_accuracy:.2%}", f"% correct prompts: {self.prompt_accuracy:.2%}"]
        for tag, score in self.task_scores.items():
            c = self.task_counts[tag]
            ci = self.task_ci.get(tag)
            within = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
            lines.append(f"{tag:<16} = {score:.2%} ({c['correct_images']} / {c['images']}){within}")
        lines.append(f"overall (mean of {self.n_tasks} tasks) = {self.overall:.5f} "
                     f"[{self.confidence:.0%} CI {self.ci_low:.5f}, {self.ci_high:.5f}]")
        if self.missing_tasks:
            lines.append(f"missing tasks: {', '.join(self.missing_tasks)}")
        return "\n".join(lines)


def _prompt_key(record: Mapping[str, Any]) -> Any:
    """A prompt's identity: its folder index, else its metadata (``summary_scores.py`` groups by metadata)."""
    if record.get("index") is not None:
        return int(record["index"])
    if record.get("metadata") is not None:
        meta = record["metadata"]
        return meta if isinstance(meta, str) else json.dumps(meta, sort_keys=True)
    raise ValueError("each record needs an 'index' (prompt index) or its 'metadata'")


def _group_prompts(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[Any, list[bool]]]:
    """tag -> prompt key -> list of per-image correctness, in first-seen order."""
    tasks: dict[str, dict[Any, list[bool]]] = {}
    tag_of: dict[Any, str] = {}
    for record in records:
        tag, key = str(record["tag"]), _prompt_key(record)
        if tag_of.setdefault(key, tag) != tag:
            raise ValueError(f"prompt {key!r} appears with tags {tag_of[key]!r} and {tag!r}")
        tasks.setdefault(tag, {}).setdefault(key, []).append(bool(record["correct"]))
    order = [t for t in TAGS if t in tasks] + sorted(t for t in tasks if t not in TAGS)
    return {t: tasks[t] for t in order}


def _bootstrap(tasks: Mapping[str, Mapping[Any, list[bool]]], n_boot: int, seed: int,
               confidence: float) -> tuple[tuple[float, float], dict[str, list[float]]]:
    """Percentile CIs of the mean of task scores and of each task's score, resampling prompts with
    replacement within each task."""
    if n_boot <= 0:
        return (math.nan, math.nan), {}
    rng = np.random.default_rng(seed)
    per_task = np.zeros((n_boot, len(tasks)))
    for t, prompts in enumerate(tasks.values()):
        correct = np.array([sum(v) for v in prompts.values()], dtype=np.float64)  # (P,)
        images = np.array([len(v) for v in prompts.values()], dtype=np.float64)  # (P,)
        idx = rng.integers(0, len(correct), size=(n_boot, len(correct)))  # (n_boot, P)
        per_task[:, t] = correct[idx].sum(axis=1) / images[idx].sum(axis=1)
    overall = per_task.mean(axis=1)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(overall, [alpha, 1.0 - alpha])
    each = np.quantile(per_task, [alpha, 1.0 - alpha], axis=0)  # (2, T)
    return (float(low), float(high)), {t: [float(each[0, k]), float(each[1, k])] for k, t in enumerate(tasks)}


def score_results(records: Iterable[Mapping[str, Any]], *, n_boot: int = 1000, seed: int = 0,
                  confidence: float = 0.95) -> GenEvalReport:
    """Summarise per-image records (each with ``tag``, ``index`` or ``metadata``, ``correct``).

    Task score = mean of ``correct`` over the task's images; overall = unweighted mean over the
    tasks present (eval.md 2.7); a prompt is correct if any of its images is. Raises ValueError
    for no records.
    """
    tasks = _group_prompts(records)
    if not tasks:
        raise ValueError("no results to score")
    counts, scores = {}, {}
    for tag, prompts in tasks.items():
        flat = [c for v in prompts.values() for c in v]
        counts[tag] = {"images": len(flat), "correct_images": sum(flat), "prompts": len(prompts),
                       "correct_prompts": sum(any(v) for v in prompts.values())}
        scores[tag] = counts[tag]["correct_images"] / counts[tag]["images"]
    n_images = sum(c["images"] for c in counts.values())
    n_prompts = sum(c["prompts"] for c in counts.values())
    missing = [t for t in TAGS if t not in tasks]
    notes = [] if not missing else [f"overall is the mean of {len(tasks)} tasks, not GenEval's 6"]
    notes += [f"unknown tag {t!r} scored as its own task" for t in tasks if t not in TAGS]
    (low, high), task_ci = _bootstrap(tasks, n_boot, seed, confidence)
    return GenEvalReport(
        overall=float(np.mean(list(scores.values()))), task_scores=scores, n_tasks=len(tasks),
        missing_tasks=missing, task_counts=counts,
        image_accuracy=sum(c["correct_images"] for c in counts.values()) / n_images,
        prompt_accuracy=sum(c["correct_prompts"] for c in counts.values()) / n_prompts,
        n_images=n_images, n_prompts=n_prompts, ci_low=low, ci_high=high, confidence=confidence,
        n_boot=n_boot, seed=seed, notes=notes, task_ci=task_ci)


# --------------------------------------------------------------------------- folders and results files


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array (EXIF orientation applied, as GenEval does)."""
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8)


def _details(kept: Mapping[str, list[Detection]]) -> dict[str, list[list[float]]]:
    """GenEval's ``details``: class -> [[x1, y1, x2, y2, score], ...] of the filtered detections."""
    return {c: [[*map(float, d.box), float(d.score)] for d in ds] for c, ds in kept.items()}


def evaluate_folder(root: str | Path, detector: Detector, options: ScoringOptions | None = None,
                    progress: bool = True, *, n_boot: int = 1000, seed: int = 0) -> tuple[GenEvalReport, list[dict]]:
    """Run ``detector`` on every sample of a GenEval folder (eval.md 2.3) and score it.

    Returns the report and one record per image: index, sample, filename, tag, prompt, metadata
    (dict), correct, reason, details (class -> [[x1, y1, x2, y2, score]] after filtering) and
    colors (class -> colour names, None where the detector gave none).
    """
    options = options or ScoringOptions()
    prompts = list(iter_sample_folder(root))
    total = sum(len(paths) for _, _, paths in prompts)
    records: list[dict] = []
    with progress_bar(total=total, desc=f"geneval [{getattr(detector, 'name', 'detector')}]", unit="img",
                      enabled=progress, leave=False) as bar:
        for index, metadata, paths in prompts:
            for path in paths:
                detections = detector.detect(load_image(path))
                correct, reason = evaluate_image(metadata, detections, options)
                kept = filter_detections(detections, metadata["tag"], options)
                records.append({"index": index, "sample": int(path.name[:-4]), "filename": str(path),
                                "tag": metadata["tag"], "prompt": metadata["prompt"], "metadata": metadata,
                                "correct": correct, "reason": reason, "details": _details(kept),
                                "colors": {c: [d.color for d in ds] for c, ds in kept.items()}})
                bar.update(1)
    if not records:
        raise ValueError(f"no samples found under {root}")
    report = score_results(records, n_boot=n_boot, seed=seed)
    logger.info("GenEval (%s) on %s:\n%s", getattr(detector, "name", "detector"), root, report.summary())
    return report, records


def write_results_jsonl(records: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """Write one JSON line per image in GenEval's results style.

    As in the official ``results.jsonl``, ``metadata`` and ``details`` are JSON-encoded strings
    (``summary_scores.py`` groups prompts by the metadata string); extra keys are kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fp:
        for record in records:
            row = dict(record)
            for key in ("metadata", "details"):
                if key in row and not isinstance(row[key], str):
                    row[key] = json.dumps(row[key])
            fp.write(json.dumps(row) + "\n")


def _index_from_filename(filename: Any) -> int | None:
    """Prompt index from ``.../<digits>/samples/<digits>.png``, else None."""
    if not isinstance(filename, str):
        return None
    parts = Path(filename).parts
    if len(parts) >= 3 and parts[-2] == SAMPLES_DIRNAME and _DIGITS.fullmatch(parts[-3]):
        return int(parts[-3])
    return None


def read_results_jsonl(path: str | Path) -> list[dict]:
    """Read a results jsonl (ours or the official one) into records :func:`score_results` accepts.

    Each line needs ``tag`` and ``correct``; the prompt index comes from ``index`` or the
    ``filename`` layout, else the ``metadata`` string identifies the prompt.
    """
    records = []
    for where, row in _jsonl(path):
        if not isinstance(row, dict) or "tag" not in row or "correct" not in row:
            raise ValueError(f"{where}: a result needs 'tag' and 'correct'")
        if row.get("index") is None:
            row["index"] = _index_from_filename(row.get("filename"))
        if row["index"] is None and row.get("metadata") is None:
            raise ValueError(f"{where}: cannot tell the prompt (no index, filename layout or metadata)")
        records.append(row)
    return records


def read_official_results(path: str | Path, *, n_boot: int = 1000, seed: int = 0) -> GenEvalReport:
    """Summarise the official ``evaluate_images.py`` output with the same :func:`score_results`."""
    return score_results(read_results_jsonl(path), n_boot=n_boot, seed=seed)


def official_command(image_folder: str | Path, outfile: str | Path, detector_path: str | Path,
                     geneval_repo: str | Path, *, python: str = "python",
                     options: ScoringOptions | None = None) -> list[str]:
    """argv for GenEval's official scorer (:data:`OFFICIAL_GENEVAL_COMMAND`); run it in GenEval's env.

    ``detector_path`` is the folder holding the Mask2Former checkpoint; non-default ``options``
    are passed through the official ``--options key=value`` flag.
    """
    script = Path(geneval_repo) / "evaluation" / "evaluate_images.py"
    argv = [python, str(script), str(image_folder), "--outfile", str(outfile), "--model-path", str(detector_path)]
    extra = (options or ScoringOptions()).official_options()
    if extra:
        argv += ["--options", *extra]
    return argv
