"""argen-export: turn a run's Lightning checkpoint into an exported model folder.

    argen-export run_dir=outputs/runs/shapes_vq                 # EMA weights of last.ckpt -> <run>/export
    argen-export run_dir=... ckpt=path/to.ckpt weights=raw out=exports/my_vq overwrite=true
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from argen.cli.common import CONFIG_DIR
from argen.io.export import export_run


def run(cfg: DictConfig) -> str:
    return str(export_run(cfg.run_dir, ckpt=cfg.ckpt, out=cfg.out, weights=cfg.weights, overwrite=cfg.overwrite))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    print(run(cfg))  # noqa: T201  (CLI output: the export folder)


if __name__ == "__main__":
    main()
