"""Evaluation runners: one ``eval`` config section (configs/eval) run on a set of samples.

:func:`run_distribution` compares samples with a reference through a feature extractor (FD / KID /
precision-recall / density-coverage, IS and class accuracy with a classifier); :func:`run_prompts`
scores a GenEval-layout folder with GenEval's rules; :func:`run_section` picks one by the section's
``kind``. argen-eval and argen-sample (``eval=...``) are thin layers over these.

Samples of an argen-sample run that did not finish (``INCOMPLETE.json`` in their folder) are refused
unless ``allow_incomplete`` is set (the report then carries a warning).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from argen.core.config import build
from argen.core.errors import ConfigError
from argen.io.folders import check_complete
from argen.data.base import tensor_to_uint8
from argen.eval import fid as metrics
from argen.eval.images import iter_images

log = logging.getLogger("argen")


def _dataset_batches(dataset: Any, batch_size: int, limit: int | None) -> Iterator[torch.Tensor]:
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for start in range(0, n, batch_size):
        images = torch.stack([dataset[i]["image"] for i in range(start, min(n, start + batch_size))])
        yield torch.from_numpy(tensor_to_uint8(images)).permute(0, 3, 1, 2)


SOURCE_WORDS = {"samples": "sample", "reference": "reference", "floor_reference": "floor reference"}


@dataclass
class Source:
    """One image set's uint8 batches (B, 3, H, W), recording for the report what went by: the image size
    (H, W) and the files that could not be read (skipped)."""

    batches: Iterable[torch.Tensor]
    unreadable: list[Path] = field(default_factory=list)
    size: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        for batch in self.batches:
            self.size = (int(batch.shape[-2]), int(batch.shape[-1]))
            yield batch


def _source(node: Any, batch_size: int, limit: int | None, key: str) -> Source:
    """A path (folder / .npz of images) or a dataset config node (at config key ``key``) -> uint8 batches."""
    if isinstance(node, (dict, DictConfig)) and "_target_" in node:
        return Source(_dataset_batches(build(node, key), batch_size, limit))
    unreadable: list[Path] = []
    batches = iter_images(str(node), batch_size, unreadable=unreadable)
    return Source(batches if limit is None else _limited(batches, limit), unreadable)


def _limited(batches: Iterator[torch.Tensor], limit: int) -> Iterator[torch.Tensor]:
    seen = 0
    for b in batches:
        if seen >= limit:
            return
        yield b[: limit - seen]
        seen += b.shape[0]


def run_distribution(cfg: DictConfig, samples: str, where: str = "eval", *,
                     allow_incomplete: bool = False) -> dict[str, Any]:
    """FD / KID / P-R / D-C (+ IS and class accuracy with a classifier) of samples vs a reference.
    ``where``: the section's config key (``eval``, or ``eval.sections.<name>``), for error messages."""
    warning = check_complete(samples, allow_incomplete)
    extractor = build(cfg.extractor, f"{where}.extractor")
    extractor = extractor.eval() if hasattr(extractor, "eval") else extractor
    name = str(getattr(extractor, "name", type(extractor).__name__))
    with_logits = hasattr(extractor, "class_logits") and cfg.get("inception_score", True)
    sources = {"samples": _source(samples, cfg.batch_size, cfg.get("num_samples"), f"{where}.samples")}
    fake, logits = metrics.extract(extractor, sources["samples"], with_logits=with_logits)
    real, real_stats, sources["reference"] = _reference_features(cfg, extractor, where)
    floor = None
    if cfg.get("floor_reference") is not None:
        sources["floor_reference"] = _source(cfg.floor_reference, cfg.batch_size, fake.shape[0],
                                             f"{where}.floor_reference")
        floor, _ = metrics.extract(extractor, sources["floor_reference"])
    report = metrics.compare_features(real, fake, extractor=name, floor_real=floor, real_stats=real_stats,
                                      n_boot=cfg.n_boot, seed=cfg.seed, fake_logits=logits,
                                      fake_labels=_labels(cfg, fake.shape[0]),
                                      kid_subset_size=int(cfg.get("kid_subset_size", 1000))).to_dict()
    report["notes"] += _source_notes(sources)
    report["unreadable_images"] = {k: len(src.unreadable) for k, src in sources.items()}
    return _with_warning(report, warning)


def _reference_features(cfg: DictConfig, extractor: Any, where: str) -> tuple[torch.Tensor, Any, Source]:
    """(features, stored (mu, sigma) or None, the source read) of the reference."""
    ref = cfg.reference
    real_stats = None
    has_stats, has_images = _npz_contents(ref)
    if has_stats:
        # ADM reference batches / cached stats: FD against the stored mu/sigma (ADM computes them over
        # the whole dataset); their arr_0 images, when present, serve KID and precision/recall.
        mu, sigma, _ = metrics.load_stats(str(ref), expected_dim=int(extractor.num_features))
        real_stats = (mu, sigma)
    if has_stats and not has_images:
        return torch.zeros(0, int(extractor.num_features)), real_stats, Source([])
    source = _source(ref, cfg.batch_size, cfg.get("num_reference"), f"{where}.reference")
    real, _ = metrics.extract(extractor, source)
    return real, real_stats, source


def _source_notes(sources: dict[str, Source]) -> list[str]:
    """Notes on what was read: unreadable files skipped, samples at another resolution than the reference."""
    notes = [f"skipped {len(src.unreadable)} unreadable {SOURCE_WORDS[name]} image(s) (first: {src.unreadable[0]}); "
             f"the metrics cover the readable ones" for name, src in sources.items() if src.unreadable]
    fake, real = sources["samples"].size, sources["reference"].size
    if fake and real and fake != real:
        notes.append(f"samples are {fake[1]}x{fake[0]} px but the reference is {real[1]}x{real[0]} px: the "
                     f"extractor resizes both to its own input size, so the distance also measures that "
                     f"resampling; sample at the reference's resolution (or give a reference at the samples') "
                     f"to compare like with like")
    return notes


def _with_warning(result: dict[str, Any], warning: str | None) -> dict[str, Any]:
    return {**result, "warning": warning} if warning else result


def _npz_contents(ref: Any) -> tuple[bool, bool]:
    """(has mu/sigma statistics, has arr_0 images) of a reference given as an ``.npz`` path."""
    import numpy as np

    if not isinstance(ref, str) or not ref.endswith(".npz"):
        return False, True
    with np.load(ref, allow_pickle=False) as data:
        return "mu" in data and "sigma" in data, "arr_0" in data


def _labels(cfg: DictConfig, n: int) -> torch.Tensor | None:
    path = cfg.get("labels")
    if not path:
        return None
    labels = torch.tensor(json.loads(Path(path).read_text()), dtype=torch.long)
    if labels.shape[0] < n:
        raise ConfigError(f"{path} has {labels.shape[0]} labels for {n} samples")
    return labels[:n]


def run_prompts(cfg: DictConfig, samples: str, out: Path, where: str = "eval", *,
                allow_incomplete: bool = False) -> dict[str, Any]:
    """GenEval rules over a GenEval-layout folder, with an in-process detector or the official results;
    writes ``<out>/<name>_results.jsonl`` (in-process) and ``<out>/<name>_tasks.png``."""
    from argen.eval import geneval

    warning = None if cfg.get("results") else check_complete(samples, allow_incomplete)
    if cfg.get("results"):
        report = geneval.read_official_results(cfg.results)
    else:
        detector = build(cfg.detector, f"{where}.detector")
        options = geneval.ScoringOptions(**OmegaConf.to_container(cfg.scoring, resolve=True)) if cfg.get("scoring") \
            else None
        report, records = geneval.evaluate_folder(samples, detector, options)
        geneval.write_results_jsonl(records, out / f"{cfg.name}_results.jsonl")
    result = _with_warning(report.to_dict(), warning)
    _bar_plot(result, out / f"{cfg.name}_tasks.png", title=cfg.name)
    return result


def _bar_plot(result: dict[str, Any], path: Path, *, title: str) -> None:
    """Per-task accuracy bars. A bare ``Figure`` (no pyplot): it leaves matplotlib's backend as the caller
    set it (a notebook's inline backend stays)."""
    from matplotlib.figure import Figure

    tasks = result.get("task_scores") or {}
    names = list(tasks)
    values = [tasks[k] if not isinstance(tasks[k], dict) else tasks[k].get("accuracy", 0.0) for k in names]
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    ax.bar(names + ["overall"], values + [result.get("overall", 0.0)], color=["#4C72B0"] * len(names) + ["#DD8452"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_section(section: DictConfig, samples: str, out: Path, where: str = "eval", *,
                allow_incomplete: bool = False) -> dict[str, Any]:
    """One ``eval`` section by its ``kind`` (``distribution`` | ``prompts``); ``where``: its config key."""
    if section.kind == "distribution":
        return run_distribution(section, samples, where, allow_incomplete=allow_incomplete)
    if section.kind == "prompts":
        return run_prompts(section, samples, out, where, allow_incomplete=allow_incomplete)
    raise ConfigError(f"`{where}.kind` is {section.kind!r}: an eval section is of kind distribution or prompts")
