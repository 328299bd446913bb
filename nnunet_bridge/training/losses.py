"""Which loss trains the zoo model: nnU-Net's per-pixel loss, or the model's own set loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import segzoo

from ..config import ConfigError
from .base import ZooTrainerBase

__all__ = ["SetPredictionLoss"]


class SetPredictionLoss(ZooTrainerBase):
    """``DC_and_CE_loss`` for per-pixel heads (the fair comparison with nnU-Net's U-Net); the
    model's own ``compute_loss`` for set-prediction heads (``HeadSpec.set_prediction`` in the
    registry: Mask2Former, EoMT), which cannot leave out an ignore label and so refuse datasets
    that have one."""

    def _build_loss(self):
        per_pixel_loss = super()._build_loss()  # DC_and_CE_loss (deep supervision is off)
        model = self.bare_network().model
        name = self.segzoo_arch["model_name"]
        if _predicts_sets(name, model):
            if self.label_manager.has_ignore_label:
                per_pixel = ", ".join(f"{h.name}_*" for h in segzoo.list_heads() if not h.set_prediction)
                raise ConfigError(
                    f"{name} trains with its own set-prediction loss, which cannot leave out the dataset's ignore "
                    f"label ({self.label_manager.ignore_label}); train a per-pixel head ({per_pixel}) on this "
                    "dataset, or drop the ignore label"
                )
            return _ModelOwnLoss(model, per_pixel_loss)
        return per_pixel_loss


def _predicts_sets(name: str, model: nn.Module) -> bool:
    """The registry's answer; a model registered without a head spec answers for itself."""
    head = segzoo.model_entry(name).head
    return head.set_prediction if head is not None else hasattr(model, "compute_loss")


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
