"""Every console script's --help says what it does, its main options and an example, in one screen."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from tests.conftest import REPO, cli_env

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
HYDRA_SCRIPTS = sorted(name for name in SCRIPTS if name != "argen-quickstart")


def run_help(script: str, flag: str = "--help") -> list[str]:
    module = SCRIPTS[script].split(":")[0]
    proc = subprocess.run([sys.executable, "-m", module, flag], capture_output=True, text=True, env=cli_env(),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()


@pytest.mark.parametrize("script", HYDRA_SCRIPTS)
def test_hydra_script_help_is_its_own(script: str) -> None:
    lines = run_help(script)
    text = "\n".join(lines)
    assert lines[0].startswith(f"{script}: "), lines[:3]  # what the script does, first
    assert "powered by Hydra" not in text and "== Configuration groups ==" not in text
    assert any(line.strip().startswith(f"{script} ") for line in lines[1:]), text  # an example
    assert "--cfg job" in text and "--hydra-help" in text
    assert len(lines) <= 30, f"{len(lines)} lines:\n{text}"


def test_short_flag_gives_the_same_help() -> None:
    assert run_help("argen-export", "-h") == run_help("argen-export", "--help")


def test_quickstart_help_is_short() -> None:
    lines = run_help("argen-quickstart")
    text = "\n".join(lines)
    assert any(line.startswith("argen-quickstart: ") for line in lines[:6]), text
    assert any(line.strip().startswith("argen-quickstart ") for line in lines), text  # an example
    assert len(lines) <= 30, f"{len(lines)} lines:\n{text}"
