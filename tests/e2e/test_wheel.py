"""A non-editable install works: the wheel ships the configs, and its console scripts run from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO, TINY


def test_wheel_ships_the_configs_and_trains_from_another_folder(tmp_path: Path) -> None:
    dist, site, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(dist), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("argen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in ("train.yaml", "sample.yaml", "experiment/shapes_vq.yaml", "trainer/cpu.yaml"):
        assert f"argen/configs/{config}" in names, f"the wheel lacks argen/configs/{config}"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    # The installed copy, not the checkout (PYTHONPATH comes before the editable install's finder).
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    where = subprocess.run([sys.executable, "-c", "import argen; print(argen.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=120)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    train = subprocess.run([str(site / "bin" / "argen-train"), "experiment=shapes_vq", "trainer.max_steps=2",
                            *TINY, "paths.output_root=out", "callbacks.reconstruction_grid=null"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (elsewhere / "out" / "runs" / "shapes_vq" / "export" / "model.safetensors").is_file()
