"""Lightning module that trains a tokenizer (the model itself stays a plain nn.Module).

Manual optimisation: the generator (encoder/decoder/codebook) and, when the GAN is on,
the discriminator have separate optimisers stepped in one ``training_step``; with the GAN
off this is ordinary single-optimiser training. EMA weights are kept separately from the raw
weights and both go into the checkpoint (``ema`` key next to ``state_dict``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from argen.training.ema import EMA, prepare_ema
from tokenizers_vq.continuous import DataScaled
from tokenizers_vq.losses.vq_loss import VQLoss
from tokenizers_vq.metrics import psnr

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., Optimizer]


def _perplexity(probs: Tensor) -> Tensor:
    """exp(entropy) of a code distribution: the effective number of codes in use."""
    return torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())


class TokenizerTrainingModule(L.LightningModule):
    """Trains a tokenizer exposing ``reconstruct(images)`` (and ``quantize`` for VQ stats).

    tokenizer: the model; loss: the objective (owns the discriminator); optimizer /
    disc_optimizer: partial optimiser constructors (Hydra ``_partial_: true``);
    lr_schedule: partial ``LambdaLR`` factory; ema_decay: None disables EMA;
    dead_code_restart_every / dead_code_threshold: restart codes used less than
    ``threshold / V`` of the time, every that many steps (0 disables);
    usage_decay: EMA factor of the per-code usage statistics;
    seed: seeds the generator that draws dead-code replacements (with the step), so a
    resumed run draws the same replacements;
    scale_images: for a tokenizer whose latent scale factor comes from data
    (:class:`~tokenizers_vq.continuous.DataScaled`), how many training images measure it with
    the final (EMA) weights at the end of fit (per process; 0 keeps the running estimate).
    """

    def __init__(
        self,
        *,
        tokenizer: nn.Module,
        loss: VQLoss,
        optimizer: OptimizerFactory,
        disc_optimizer: OptimizerFactory | None = None,
        lr_schedule: Callable[..., Any] | None = None,
        ema_decay: float | None = 0.999,
        gradient_clip: float | None = 1.0,
        dead_code_restart_every: int = 0,
        dead_code_threshold: float = 0.03,
        usage_decay: float = 0.99,
        seed: int = 0,
        scale_images: int = 512,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.tokenizer = tokenizer
        self.loss = loss
        self.optimizer_factory = optimizer
        self.disc_optimizer_factory = disc_optimizer
        self.lr_schedule_factory = lr_schedule
        self.gradient_clip = gradient_clip
        self.dead_code_restart_every = dead_code_restart_every
        self.dead_code_threshold = dead_code_threshold
        self.usage_decay = usage_decay
        self.seed = seed
        self.scale_images = scale_images
        self.ema = EMA(tokenizer, decay=ema_decay) if ema_decay is not None else None
        self.skipped_samples = 0
        self._skips_reported = False
        self.batches_done = 0  # optimisation steps of the tokenizer (global_step counts both optimisers)
        if loss.uses_discriminator and disc_optimizer is None:
            raise ValueError("the loss has a discriminator (disc_weight > 0) but no disc_optimizer is configured")

    # ---- optimisers -----------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        opt = self.optimizer_factory(self.tokenizer.parameters())
        optimizers: list[Optimizer] = [opt]
        if self.loss.discriminator is not None:
            assert self.disc_optimizer_factory is not None
            optimizers.append(self.disc_optimizer_factory(self.loss.discriminator.parameters()))
        if self.lr_schedule_factory is None:
            return optimizers
        schedulers = [{"scheduler": self.lr_schedule_factory(o), "interval": "step"} for o in optimizers]
        return optimizers, schedulers

    # ---- hooks ----------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        prepare_ema(self.ema, self.trainer.strategy, self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ema"] = self.ema.state_dict() if self.ema is not None else None
        checkpoint["tokenizer_batches_done"] = self.batches_done

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None and checkpoint.get("ema") is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        self.batches_done = int(checkpoint.get("tokenizer_batches_done", 0))

    # ---- training -------------------------------------------------------------------------
    def _check_batch(self, images: Tensor) -> None:
        expected = getattr(self.tokenizer, "image_size", None)
        if expected is not None and tuple(images.shape[-2:]) != (expected, expected):
            raise ValueError(f"data yields {tuple(images.shape[-2:])} images but the tokenizer was built for "
                             f"{expected}x{expected}; set data image_size to ${{tokenizer.image_size}}")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.skipped_samples += int(batch.get("num_skipped", 0))
        if "image" not in batch:  # every item of this batch was unreadable
            return
        images = batch["image"]
        self._check_batch(images)
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        schedulers = self.lr_schedulers()
        schedulers = schedulers if isinstance(schedulers, list) else ([schedulers] if schedulers else [])
        step = self.batches_done

        rec = self.tokenizer.reconstruct(images)
        terms = self.loss.generator_loss(images, rec, step=step, last_layer=self.tokenizer.last_layer())
        self._optimise(optimizers[0], terms.loss, self.tokenizer)
        if self.loss.disc_active(step):
            d_terms = self.loss.discriminator_loss(images, rec.images)
            self._optimise(optimizers[1], d_terms.loss, self.loss.discriminator)
            terms.logs.update(d_terms.logs)
        for sch in schedulers:
            sch.step()
        self.batches_done += 1
        if self.ema is not None:
            self.ema.update(self.tokenizer)
        terms.logs.update(self._codebook_stats(rec.indices, rec.latents))
        terms.logs["lr"] = torch.tensor(optimizers[0].param_groups[0]["lr"])
        self.log_dict({f"train/{k}": v for k, v in terms.logs.items()}, prog_bar=False, batch_size=images.shape[0])
        self.log("loss", terms.logs["loss"], prog_bar=True, logger=False, batch_size=images.shape[0])
        self.log("psnr", psnr(rec.images.detach(), images).mean(), prog_bar=True, logger=False,
                 batch_size=images.shape[0])

    def _optimise(self, opt: Any, loss: Tensor, module: nn.Module) -> None:
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.gradient_clip:
            self.clip_gradients(opt, gradient_clip_val=self.gradient_clip, gradient_clip_algorithm="norm")
        opt.step()

    @torch.no_grad()
    def _codebook_stats(self, indices: Tensor, latents: Tensor) -> dict[str, Tensor]:
        quantizer = getattr(self.tokenizer, "quantize", None)
        if quantizer is None:
            return {}
        v = quantizer.codebook_size
        layout = getattr(self.tokenizer, "layout", None)
        scales = layout is not None and layout.kind == "scales"
        if scales:  # per-scale histograms (K, V): coarse-scale collapse is the scale-residual failure mode
            flat = indices.reshape(indices.shape[0], -1)
            scale_id = torch.cat([torch.full((h * w,), k, device=flat.device)
                                  for k, (h, w) in enumerate(layout.shapes)])
            counts = torch.bincount((scale_id[None] * v + flat).flatten(), minlength=len(layout.shapes) * v)
            counts = counts.float().view(len(layout.shapes), v)
        else:
            counts = torch.bincount(indices.flatten(), minlength=v).float()
        # Sum the histogram over processes so every replica sees the same usage (and restarts alike).
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        quantizer.update_usage(counts, self.usage_decay)
        total = counts.sum(0) if scales else counts
        probs = total / total.sum().clamp_min(1)
        stats = {"codebook_usage": (total > 0).float().mean(), "perplexity": _perplexity(probs)}
        if scales:
            for k, ema in enumerate(quantizer.usage_ema_scales):
                stats[f"perplexity_scale{k}"] = _perplexity(ema / ema.sum().clamp_min(1e-12))
        every = self.dead_code_restart_every
        if every and self.batches_done % every == 0:
            width = quantizer.embed_dim
            candidates = latents.detach()
            if candidates.ndim == 4:  # (B, D, h, w) encoder latents
                candidates = candidates.permute(0, 2, 3, 1)
            candidates = candidates.reshape(-1, width).float()
            candidates = self.all_gather(candidates).reshape(-1, width)  # same pool on every rank
            rng = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + self.batches_done)
            stats["restarted_codes"] = torch.tensor(float(quantizer.restart_dead_codes(
                candidates.cpu(), self.dead_code_threshold, rng)))
        return stats

    def on_train_epoch_end(self) -> None:
        skipped = int(self.trainer.strategy.reduce(torch.tensor(float(self.skipped_samples), device=self.device),
                                                   reduce_op="sum").item())
        if skipped and self.trainer.is_global_zero:
            # The same files fail every epoch: say it once, count it in train/skipped_samples always.
            report = log.debug if self._skips_reported else log.warning
            report("epoch %d: skipped %d unreadable samples (see the warnings above for the files); later "
                   "epochs count them in train/skipped_samples only", self.current_epoch, skipped)
            self._skips_reported = True
        # Already summed over processes, so equal on every rank: syncing (a mean) keeps the value.
        self.log("train/skipped_samples", float(skipped), sync_dist=True)
        self.skipped_samples = 0

    def on_train_end(self) -> None:
        self._measure_latent_scale()

    @torch.no_grad()
    def _measure_latent_scale(self) -> None:
        """A data-derived latent scale factor, measured on training images with the weights that get exported."""
        model = self.ema.module if self.ema is not None else self.tokenizer
        if not isinstance(model, DataScaled) or self.scale_images <= 0:
            return
        was_training, total, seen = model.training, None, 0
        model.eval()
        for batch in self.trainer.train_dataloader:
            if "image" not in batch:
                continue
            stats = model.scale_statistics(batch["image"][: self.scale_images - seen].to(self.device))
            if stats is None:  # a fixed factor
                break
            total = stats if total is None else total + stats
            seen += min(len(batch["image"]), self.scale_images - seen)
            if seen >= self.scale_images:
                break
        model.train(was_training)
        if total is None:
            return
        total = self.trainer.strategy.reduce(total, reduce_op="sum")  # every process: the same factor
        model.set_scale_statistics(total)
        log.info("latent scale factor 1/std = %.6g, measured on %d training images", model.scaling_factor,
                 int(self.trainer.strategy.reduce(torch.tensor(float(seen), device=self.device), reduce_op="sum")))

    # ---- validation -----------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if "image" not in batch:
            return
        images = batch["image"]
        model = self.ema.module if self.ema is not None else self.tokenizer
        rec = model.reconstruct(images)
        self.log("val/psnr", psnr(rec.images, images).mean(), sync_dist=True, batch_size=images.shape[0],
                 prog_bar=True)
        self.log("val/rec", (rec.images - images).pow(2).mean(), sync_dist=True, batch_size=images.shape[0])

    def forward(self, images: Tensor) -> Any:  # alias of the training path, for DDP wrappers
        return self.tokenizer.reconstruct(images)
