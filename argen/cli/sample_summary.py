"""Summary of an ``argen-sample -m`` sweep: one row per job (its overrides, speed and quality),
written as summary.md / summary.json next to the jobs, with a plot of quality vs the swept setting."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("argen")


def quality_of(evaluation: dict[str, Any] | None) -> tuple[str, float] | None:
    """The headline number of an evaluation section: GenEval-style overall, else FD."""
    if not evaluation:
        return None
    if "overall" in evaluation:
        return "overall", float(evaluation["overall"])
    if "fd" in evaluation:
        return str(evaluation.get("metric", "fd")), float(evaluation["fd"])
    return None


def _overrides(settings: dict[str, Any]) -> dict[str, str]:
    pairs = [p.split("=", 1) for p in settings["config"].get("sweep_overrides") or [] if "=" in p]
    return {k.lstrip("+~"): v for k, v in pairs}


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for settings_file in sorted(sweep_dir.glob("*/settings.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        s = json.loads(settings_file.read_text())
        row: dict[str, Any] = {"job": settings_file.parent.name, **_overrides(s),
                               "sampler_images_per_s": s["stats"]["sampler_images_per_s"],
                               "end_to_end_images_per_s": s["stats"]["end_to_end_images_per_s"],
                               "forward_passes_per_image": s["stats"]["forward_passes_per_image"]}
        q = quality_of(s.get("evaluation"))
        if q is not None:
            row[q[0]] = q[1]
            row["quality_metric"] = q[0]
        for key in ("class_accuracy", "precision", "recall"):
            if (s.get("evaluation") or {}).get(key) is not None:
                row[key] = float(s["evaluation"][key])
        if s.get("evaluation") and "task_scores" in s["evaluation"]:
            row.update({f"task/{k}": v for k, v in s["evaluation"]["task_scores"].items() if v is not None})
        rows.append(row)
    return rows


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    # Settings shared by every job (paths, the generator) are left out of the table.
    keys = [k for k in dict.fromkeys(k for r in rows for k in r)
            if len({str(r.get(k)) for r in rows}) > 1 or not isinstance(rows[0].get(k), str) or k == "job"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |")
    (sweep_dir / "summary.md").write_text("# argen-sample sweep\n\n" + "\n".join(lines) + "\n")
    (sweep_dir / "summary.json").write_text(json.dumps(rows, indent=2))
    _plot(sweep_dir, rows)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))


def _plot(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    metric = next((r["quality_metric"] for r in rows if "quality_metric" in r), None)
    swept = [k for k in rows[0] if k.startswith("sampler.") and len({r.get(k) for r in rows}) > 1] if rows else []
    if metric is None or not swept:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = swept[0]
    pts = sorted((float(r[key]), r[metric]) for r in rows if metric in r)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-")
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.set_title("quality vs " + key)
    fig.tight_layout()
    fig.savefig(sweep_dir / "summary.png", dpi=120)
    plt.close(fig)


class MultirunSummary(Callback):
    """Hydra callback (configs/sample.yaml ``hydra.callbacks.summary``)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = collect(sweep_dir)
        if rows:
            write_summary(sweep_dir, rows)
            log.info("sweep summary of %d jobs -> %s", len(rows), sweep_dir / "summary.md")
