"""argen-eval: evaluate samples against a reference, or GenEval-style against prompts.

    argen-eval eval=fid samples=samples.npz eval.reference=ref.npz eval.extractor.weights_path=...
    argen-eval eval=fd_digits samples=out/samples eval.extractor.path=outputs/feature_nets/digits
    argen-eval eval=shapes samples=out/geneval_layout        # ShapesEval (exact judge)
    argen-eval eval=geneval eval.results=results.jsonl       # summarise the official GenEval run
    argen-eval eval=all ...                                   # every section configured under eval.sections

Writes <output_dir>/report.json, summary.md and, for prompt-based evals, a per-task bar plot. The
runners are :mod:`argen.eval.runners`; this is the Hydra layer over them.

Samples of an argen-sample run that did not finish (``INCOMPLETE.json`` in their folder) are refused;
finish them with ``argen-sample ... resume=true``, or pass ``allow_incomplete=true`` to evaluate them
anyway (the report and summary.md then carry a warning).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from argen.cli.common import CONFIG_DIR, ConfigError
from argen.eval.runners import run_section

log = logging.getLogger("argen")


def _summary(report: dict[str, Any]) -> str:
    lines = ["# argen-eval report", ""]
    for section, res in report.items():
        lines.append(f"## {section}")
        if res.get("warning"):
            lines.append(f"- **WARNING: {res['warning']}**")
        if "fd" in res:
            ci = res.get("fd_ci95")
            lines.append(f"- {res['metric']} ({res['extractor']}, N_fake={res['num_fake']}, N_real={res['num_real']}): "
                         f"{res['fd']:.4f}" + (f" (bootstrap 95% [{ci[0]:.4f}, {ci[1]:.4f}])" if ci else ""))
            if res.get("floor"):
                lines.append(f"- real-vs-real floor at N={int(res['floor']['n'])}: {res['floor']['fd']:.4f}")
            for key in ("precision", "recall", "density", "coverage", "class_accuracy"):
                if res.get(key) is not None:
                    lines.append(f"- {key}: {res[key]:.4f}")
        if "overall" in res:
            lines.append(f"- overall: {res['overall']:.4f}")
            for task, value in (res.get("task_scores") or {}).items():
                v = value if not isinstance(value, dict) else value.get("accuracy")
                lines.append(f"- {task}: {v:.4f}" if v is not None else f"- {task}: missing")
        lines.append("")
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = cfg.eval.sections if "sections" in cfg.eval else {cfg.eval.name: cfg.eval}
    report: dict[str, Any] = {}
    for key, section in sections.items():
        where = f"eval.sections.{key}" if "sections" in cfg.eval else "eval"
        samples = section.get("samples") or cfg.samples
        if samples is None:
            raise ConfigError(f"eval section {key!r} needs samples=<folder or .npz> (or eval.samples)")
        report[key] = run_section(section, str(samples), out, where,
                                  allow_incomplete=bool(cfg.get("allow_incomplete", False)))
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    (out / "summary.md").write_text(_summary(report))
    log.info("wrote %s and summary.md", out / "report.json")
    return report


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
