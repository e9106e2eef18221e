"""A quick-start log reads as a story: no progress-bar control codes off a terminal, no tips, no
zero FLOPs (the skipped-samples warning said once: tests/e2e/test_tokenize_and_bad_input.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from argen.cli.common import compose_config
from tests.conftest import TINY, cli, cli_env

# What a user's tiny run keeps from TINY: the default progress bar, model summary and loggers.
USER_DEFAULTS = ("callbacks.progress=", "trainer.enable_model_summary=", "logger=")
NOISE = {"carriage return": "\r", "escape code": "\x1b[", "litlogger tip": "litlogger", "zero FLOPs": "FLOPs",
         "limit_val_batches notice": "limit_val_batches", "Lightning/torch deprecation": "LeafSpec"}


def test_tiny_train_log_has_no_noise_and_plain_progress(tmp_path: Path) -> None:
    overrides = [o for o in TINY if not o.startswith(USER_DEFAULTS)]
    proc = subprocess.run([*cli("argen-train"), "experiment=shapes_vq", f"paths.output_root={tmp_path}", *overrides,
                           "trainer.max_steps=3"], capture_output=True, env=cli_env(), timeout=300)
    log = (proc.stdout + proc.stderr).decode()  # bytes: text mode would turn carriage returns into newlines
    assert proc.returncode == 0, log[-3000:]
    found = [name for name, text in NOISE.items() if text in log]
    assert not found, f"noise in the log: {found}\n{log}"
    assert re.search(r"step 3/3\b", log), log  # the plain progress line
    assert re.search(r"VQTokenizer.*parameters", log), log  # a one-line model summary


def test_tokenize_progress_is_plain_off_a_terminal(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from argen.cli.tokenize import run as tokenize_run
    from tests.e2e.test_tokenize_and_bad_input import export_tokenizer

    tok = export_tokenizer(tmp_path / "tok", 0)
    tokenize_run(compose_config("tokenize", [f"tokenizer_path={tok}", f"output_dir={tmp_path / 'codes'}",
                                             "data.train.size=16", "data.val.size=8", "batch_size=8"]))
    err = capfd.readouterr().err
    assert "\r" not in err and "it/s]" not in err, err
