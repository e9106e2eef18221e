"""Training callbacks: reconstruction grids for tokenizers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image


class ReconstructionGrid(L.Callback):
    """Every ``every_n_steps``: originals (top rows) over EMA reconstructions (bottom rows).

    The grid goes to TensorBoard when a TensorBoardLogger is attached and to
    ``directory/step{N}.png``. Images come from the first validation batch (fixed across the
    run so grids are comparable), or the current training batch when there is no validation set.
    """

    def __init__(self, *, every_n_steps: int = 500, num_images: int = 16, directory: str | None = None) -> None:
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.directory = Path(directory) if directory else None
        self._fixed: torch.Tensor | None = None

    def _images(self, trainer: L.Trainer, batch: dict[str, Any]) -> torch.Tensor | None:
        if self._fixed is None:
            loaders = trainer.val_dataloaders
            if loaders:
                first = next(iter(loaders))
                self._fixed = first["image"][: self.num_images] if "image" in first else None
        images = self._fixed if self._fixed is not None else batch.get("image")
        return None if images is None else images[: self.num_images]

    @rank_zero_only
    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: dict[str, Any], batch_idx: int) -> None:
        step = getattr(pl_module, "batches_done", trainer.global_step)
        if self.every_n_steps <= 0 or step % self.every_n_steps != 0:
            return
        images = self._images(trainer, batch)
        if images is None:
            return
        images = images.to(pl_module.device)
        ema = getattr(pl_module, "ema", None)
        model = ema.module if ema is not None else pl_module.tokenizer
        recon = model.reconstruct(images).images.clamp(-1, 1)
        grid = make_grid(torch.cat([images, recon]).float().cpu(), nrow=min(8, len(images)),
                         normalize=True, value_range=(-1, 1))
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image("reconstructions", grid, global_step=step)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            save_image(grid, self.directory / f"step{step:07d}.png")
