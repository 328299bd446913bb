"""Which loss trains the zoo model: nnU-Net's per-pixel loss, or the model's own set loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import segzoo
from segzoo.models import MaskClassificationSegmenter

from .base import ZooTrainerBase

__all__ = ["SetPredictionLoss"]


class SetPredictionLoss(ZooTrainerBase):
    """``DC_and_CE_loss`` for per-pixel heads (the fair comparison with nnU-Net's U-Net); the
    model's own ``compute_loss`` for set-prediction heads (``HeadSpec.set_prediction`` in the
    registry: Mask2Former, EoMT), given the dataset's ignore label so that its pixels are left
    out of the matching, the point sampling and the mask losses."""

    def _build_loss(self):
        per_pixel_loss = super()._build_loss()  # DC_and_CE_loss (deep supervision is off)
        model = self.bare_network().model
        if _predicts_sets(self.segzoo_arch["model_name"], model):
            return _ModelOwnLoss(model, per_pixel_loss, self.label_manager.ignore_label)
        return per_pixel_loss


def _predicts_sets(name: str, model: nn.Module) -> bool:
    """The registry's answer; a model registered without a head spec answers for itself (every
    zoo model has ``compute_loss``; only the mask-classification ones return sets in training)."""
    head = segzoo.model_entry(name).head
    return head.set_prediction if head is not None else isinstance(model, MaskClassificationSegmenter)


class _ModelOwnLoss:
    """Set-prediction models (Mask2Former, EoMT) train with ``model.compute_loss``; in eval mode
    they return semantic logits, which get nnU-Net's per-pixel loss for the validation curve."""

    def __init__(self, model: nn.Module, per_pixel_loss: Any, ignore_label: int | None = None):
        self.model = model
        self.per_pixel_loss = per_pixel_loss
        self.ignore_label = ignore_label

    def __call__(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        if isinstance(output, torch.Tensor):
            return self.per_pixel_loss(output, target)
        return self.model.compute_loss(output, target[:, 0].long(), ignore_index=self.ignore_label)
