"""What may change when a run is resumed, and the check that refuses the rest before anything is written.

A checkpoint holds weights of one architecture, trained with one objective on one data stream; resuming
it under another config either fails deep inside ``load_state_dict`` (after the run folder was already
rewritten) or silently trains something else. So ``argen-train`` compares the new resolved config with
the run's ``resolved_config.yaml`` first and refuses any change outside ``RESUMABLE`` (how long to train,
how and where to log, which machine runs it), naming every key that differs.
"""

from __future__ import annotations

from typing import Any

from argen.core.errors import ConfigError

# Dotted prefixes that may differ between a run and its resumption.
RESUMABLE: tuple[str, ...] = (
    "resume", "resume_allow", "paths", "logger", "callbacks", "export_after_training", "matmul_precision",
    "trainer.max_steps", "trainer.max_epochs", "trainer.max_time", "trainer.val_check_interval",
    "trainer.check_val_every_n_epoch", "trainer.log_every_n_steps", "trainer.enable_progress_bar",
    "trainer.enable_model_summary", "trainer.limit_val_batches", "trainer.num_sanity_val_steps",
    "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.precision",
    "trainer.default_root_dir", "trainer.benchmark", "trainer.deterministic",
    "data.num_workers", "data.eval_batch_size", "data.pin_memory", "data.persistent_workers",
    # the schedule's length follows trainer.max_steps: a longer run stretches it (README's longer runs)
    "module.lr_schedule.total_steps",
)
# Never allowed, not even through ``resume_allow``: the checkpoint's weights could not load.
ARCHITECTURE: tuple[str, ...] = ("stage", "tokenizer", "generator", "tokenizer_sha256", "target_sha256")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are leaves."""
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _under(key: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _is_location(key: str) -> bool:
    """Where files are (tokenizer_path, codes_dir, data.train.root, ...): moving them is no change of recipe,
    and what they hold is pinned by sha256 (``tokenizer_sha256`` may not change)."""
    last = key.rsplit(".", 1)[-1]
    return last in ("root", "path", "dir") or last.endswith(("_path", "_dir", "_root"))


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs (missing on one side counts), as ``key: (old, new)``."""
    a, b = flatten(old), flatten(new)
    missing = object()
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(a.keys() | b.keys())
            if a.get(k, missing) != b.get(k, missing)}


def check_resume_config(old: dict[str, Any], new: dict[str, Any], *, run_dir: str,
                        allow: list[str] | tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """Refuse a resumption whose config differs from the run's outside ``RESUMABLE`` (plus ``allow``,
    which cannot reach the architecture); returns the allowed changes."""
    changes = config_changes(old, new)
    refused = {k: v for k, v in changes.items()
               if _under(k, ARCHITECTURE) or not (_under(k, RESUMABLE) or _is_location(k) or _under(k, list(allow)))}
    if refused:
        lines = "\n".join(f"  {k}: {o!r} (run) -> {n!r} (now)" for k, (o, n) in list(refused.items())[:20])
        more = f"\n  ... and {len(refused) - 20} more" if len(refused) > 20 else ""
        arch = [k for k in refused if _under(k, ARCHITECTURE)]
        hint = ("the checkpoint's weights belong to the run's architecture: start a new run (name=...) "
                "for a different model" if arch else
                "pass resume_allow=[<key>,...] to resume with these changes anyway, or start a new run (name=...)")
        raise ConfigError(f"cannot resume {run_dir}: the config differs from the run's resolved_config.yaml in "
                          f"{len(refused)} key(s) that may not change on resume:\n{lines}{more}\n"
                          f"Nothing was written. {hint[0].upper() + hint[1:]}.")
    return {k: v for k, v in changes.items() if k not in refused}
