"""Which loss trains the zoo model: nnU-Net's per-pixel loss, or the model's own set loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from .base import ZooTrainerBase

__all__ = ["SetPredictionLoss"]


class SetPredictionLoss(ZooTrainerBase):
    """``DC_and_CE_loss`` for per-pixel heads (the fair comparison with nnU-Net's U-Net); the
    model's own ``compute_loss`` for set-prediction heads (Mask2Former, EoMT), which cannot leave
    out an ignore label and so refuse datasets that have one."""

    def _build_loss(self):
        per_pixel_loss = super()._build_loss()  # DC_and_CE_loss (deep supervision is off)
        model = self.bare_network().model
        if hasattr(model, "compute_loss"):
            if self.label_manager.has_ignore_label:
                raise ConfigError(
                    f"{type(model).__name__} {getattr(model, 'model_name', '')} trains with its own set-prediction "
                    f"loss, which cannot leave out the dataset's ignore label ({self.label_manager.ignore_label}); "
                    "train a per-pixel head (segformer_*, upernet_* or dpt_*) on this dataset, or drop the ignore label"
                )
            return _ModelOwnLoss(model, per_pixel_loss)
        return per_pixel_loss


class _ModelOwnLoss:
    """Set-prediction models (Mask2Former, EoMT) train with ``model.compute_loss``; in eval mode
    they return semantic logits, which get nnU-Net's per-pixel loss for the validation curve."""

    def __init__(self, model: nn.Module, per_pixel_loss: Any):
        self.model = model
        self.per_pixel_loss = per_pixel_loss

    def __call__(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        if isinstance(output, torch.Tensor):
            return self.per_pixel_loss(output, target)
        return self.model.compute_loss(output, target[:, 0].long())
