"""argen-sample's output folder: one run at a time (a lock), interrupted runs marked and resumable,
evaluation refusing unfinished folders, and throughput figures named for what they measure."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import argen.pipeline as pipeline
from argen.cli.common import ConfigError, compose_config
from argen.cli.evaluate import run as eval_run
from tests.conftest import REPO, cli_env
from tests.helpers import decode_calling
from tests.e2e.test_generator_pipeline import sample, text_pipeline  # noqa: F401  (fixture)

PROMPTS = "prompts=[a photo of a red circle,a photo of two squares,a photo of a blue triangle]"
RUN = (PROMPTS, "n_per_condition=3", "batch_size=2")  # 9 images in 5 batches
MARKER = "INCOMPLETE.json"


def after_batches(monkeypatch: pytest.MonkeyPatch, k: int, action: Any) -> None:
    """Call ``action()`` when argen-sample starts decoding batch ``k + 1`` (``k`` batches are written)."""
    monkeypatch.setattr(pipeline, "decode", decode_calling(pipeline.decode, k, action))


def interrupt() -> None:
    raise KeyboardInterrupt  # what SIGINT (Ctrl-C) raises in the main thread


def npz(folder: Path) -> np.ndarray:
    with np.load(folder / "samples.npz") as data:
        return data["arr_0"]


@pytest.fixture(scope="module")
def reference(text_pipeline: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:  # noqa: F811
    """The samples of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "full"
    sample(text_pipeline, out, *RUN)
    return npz(out)


# ---- 1. one run per folder ----------------------------------------------------------------------
def test_second_run_into_a_busy_folder_is_refused_and_the_first_is_intact(
        text_pipeline: dict[str, Path], reference: np.ndarray, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "busy"
    refused: list[BaseException] = []

    def second_run() -> None:  # run B starts while run A is between batches
        try:
            sample(text_pipeline, out, PROMPTS, "n_per_condition=1", "overwrite=true")
        except Exception as e:  # noqa: BLE001  (recorded, checked below)
            refused.append(e)

    after_batches(monkeypatch, 2, second_run)
    sample(text_pipeline, out, *RUN)
    assert len(refused) == 1, "the second run was not refused"
    message = str(refused[0])
    assert f"pid {os.getpid()}" in message and socket.gethostname() in message and "since" in message
    assert "output_dir" in message  # what to do
    assert np.array_equal(npz(out), reference)  # run A finished, untouched by B
    assert len(list((out / "images").iterdir())) == 9
    assert json.loads((out / "settings.json").read_text())["num_images"] == 9


@pytest.mark.multiprocess
def test_every_torchrun_rank_refuses_a_busy_folder(text_pipeline: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    """Rank 0 takes the lock for the job; when it cannot, the other ranks fail with it instead of waiting.
    (test_two_processes_write_the_same_images_as_one covers a job whose rank 0 gets the lock.)"""
    from argen.io.folders import FolderLock

    out = tmp_path / "busy"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "argen.cli.sample", f"generator_path={text_pipeline['generator']}", PROMPTS, "n_per_condition=1",
           "device=cpu", f"output_dir={out}"]
    with FolderLock(out):
        proc = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert f"in use by another argen-sample run: pid {os.getpid()}" in proc.stdout + proc.stderr
    assert "rank 0 could not prepare the output folder" in proc.stdout + proc.stderr  # rank 1's error
    assert not (out / "images").exists()


# ---- 2. interrupted runs: marked, refused, resumable; evaluation refuses them ---------------------
def test_interrupted_run_is_marked_refused_and_resumes_bit_identical(
        text_pipeline: dict[str, Path], reference: np.ndarray, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "part"
    after_batches(monkeypatch, 2, interrupt)
    with pytest.raises(KeyboardInterrupt):
        sample(text_pipeline, out, *RUN)
    monkeypatch.undo()
    marker = json.loads((out / MARKER).read_text())
    assert marker["complete"] is False and marker["total_images"] == 9
    assert marker["settings"]["seed"] == 0 and marker["settings"]["n_per_condition"] == 3
    assert not (out / "settings.json").exists() and not (out / "samples.npz").exists()
    written = sorted(p.name for p in (out / "images").iterdir())
    assert written == [f"{i:06d}.png" for i in range(4)]  # two batches of two, no temp files
    with pytest.raises(FileExistsError, match=r"(?s)incomplete.*resume=true"):
        sample(text_pipeline, out, *RUN)
    with pytest.raises(ConfigError, match=r"seed"):
        sample(text_pipeline, out, *RUN, "resume=true", "seed=1")
    (out / "images" / "000003.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # a truncated image is sampled again
    settings = sample(text_pipeline, out, *RUN, "resume=true")
    assert np.array_equal(npz(out), reference)
    assert not (out / MARKER).exists() and settings["resumed_images"] == 3
    assert json.loads((out / "settings.json").read_text())["num_images"] == 9
    with pytest.raises(FileExistsError, match="overwrite=true"):
        sample(text_pipeline, out, *RUN, "resume=true")  # complete: nothing to resume


def test_killed_run_leaves_no_stale_lock_and_resumes(
        text_pipeline: dict[str, Path], reference: np.ndarray, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "killed"
    args = [f"generator_path={text_pipeline['generator']}", f"output_dir={out}", "device=cpu", *RUN]
    code = "from tests.helpers import sample_killed_after; sample_killed_after(2)"
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=cli_env(), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (out / MARKER).is_file() and (out / ".argen-sample.lock").is_file()
    for path in (out / "images").iterdir():
        with Image.open(path) as im:
            im.load()  # every PNG left behind is whole
    sample(text_pipeline, out, *RUN, "resume=true")  # the dead process's lock does not block
    assert np.array_equal(npz(out), reference)


def test_evaluation_refuses_an_incomplete_folder_unless_allowed(
        text_pipeline: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    out = tmp_path / "suite"
    after_batches(monkeypatch, 1, interrupt)
    with pytest.raises(KeyboardInterrupt):
        sample(text_pipeline, out, "suite=shapes", "suite_per_tag=1", "n_per_condition=2", "batch_size=2")
    monkeypatch.undo()
    for target in (out, out / "images", out / "geneval"):
        cfg = compose_config("evaluate", ["eval=shapes", f"samples={target}", f"output_dir={tmp_path / 'eval'}"])
        with pytest.raises(ConfigError, match=rf"(?s){MARKER}.*resume=true"):
            eval_run(cfg)
    sample(text_pipeline, out, "suite=shapes", "suite_per_tag=1", "n_per_condition=2", "batch_size=2",
           "resume=true")
    (out / MARKER).write_text(json.dumps({"complete": False}))  # as if still unfinished, now with geneval/
    cfg = compose_config("evaluate", ["eval=shapes", f"samples={out / 'geneval'}", f"output_dir={tmp_path / 'eval'}",
                                      "allow_incomplete=true"])
    report = eval_run(cfg)["shapes"]
    assert "incomplete" in report["warning"] and 0.0 <= report["overall"] <= 1.0
    assert "incomplete" in (tmp_path / "eval" / "summary.md").read_text()


# ---- 3. throughput, named ---------------------------------------------------------------------------
def test_settings_and_log_report_sampler_and_end_to_end_throughput(
        text_pipeline: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    with caplog.at_level(logging.INFO, logger="argen"):
        settings = sample(text_pipeline, tmp_path / "speed", *RUN)
    stats = json.loads((tmp_path / "speed" / "settings.json").read_text())["stats"]
    assert stats == settings["stats"]
    assert 0 < stats["end_to_end_images_per_s"] <= stats["sampler_images_per_s"]
    assert stats["end_to_end_seconds"] >= stats["sampler_seconds"] > 0
    last = [r.getMessage() for r in caplog.records if r.name == "argen"][-1]
    assert "sampler_images_per_s" in last and "end_to_end_images_per_s" in last
