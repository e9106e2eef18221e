"""The objective of a rectified-flow tokenizer decoder (FlexTok): the velocity loss
``mean |v_theta(x_t, t, registers) - (eps - x)|^2`` over latent elements and the batch, the same interface as
:class:`~tokenizers_vq.losses.vq_loss.VQLoss` for the tokenizer harness (no discriminator).

Not included: FlexTok's REPA term (alignment of intermediate decoder features with DINOv2-L), which needs
DINOv2 weights this project cannot download; the tiny presets train without it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tokenizers_vq.losses.vq_loss import LossTerms


class FlowTokenizerLoss(nn.Module):
    discriminator = None
    uses_discriminator = False

    def __init__(self, *, flow_weight: float = 1.0) -> None:
        super().__init__()
        if flow_weight <= 0:
            raise ValueError(f"flow_weight must be > 0, got {flow_weight}")
        self.flow_weight = float(flow_weight)

    def disc_active(self, step: int) -> bool:
        return False

    def generator_loss(self, images: Tensor, rec: Any, *, step: int, last_layer: Tensor) -> LossTerms:
        if rec.velocity is None or rec.target is None:
            raise ValueError("FlowTokenizerLoss needs a flow tokenizer's training reconstruction (velocity and "
                             "target); was the tokenizer in eval mode?")
        flow = (rec.velocity.float() - rec.target.float()).pow(2).mean()
        loss = self.flow_weight * flow
        with torch.no_grad():
            rec_err = (rec.images.float() - images.float()).pow(2).mean()
        logs = {"flow": flow.detach(), "rec": rec_err, "loss": loss.detach(),
                "keep_k": rec.keep_k.float().mean() if rec.keep_k is not None else torch.zeros(())}
        return LossTerms(loss=loss, logs=logs)

    def discriminator_loss(self, images: Tensor, recon: Tensor) -> LossTerms:
        raise RuntimeError("FlowTokenizerLoss has no discriminator")
