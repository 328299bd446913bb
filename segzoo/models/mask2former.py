"""Mask2Former (masked-attention mask transformer) on ViT foundation backbones:
``mask2former_{backbone}``.

In ``train()`` these models return set outputs and train with ``model.compute_loss``;
in ``eval()`` they return semantic log-probabilities (see :class:`MaskClassificationSegmenter`)."""

from __future__ import annotations

from typing import Any

from .._registry import ModelEntry
from ..heads import create_mask2former_head
from ._builder import build_segmenter
from .mask_classification import MaskClassificationSegmenter

__all__ = ["build"]


def build(entry: ModelEntry, pretrained: bool = False, **kwargs: Any) -> MaskClassificationSegmenter:
    """Head options: ``decoder_hidden_size``, ``num_queries``, ``decoder_layers``,
    ``encoder_layers``, ``num_attention_heads``, ``dim_feedforward``,
    ``encoder_feedforward_dim``, ``deep_supervision`` and the loss weights; see
    :func:`segzoo.heads.create_mask2former_head`.

    With ``neck="none"`` the pixel decoder gets four same-stride maps: it still works
    (its FPN level and mask features are then at the backbone stride, not 4) and the
    masks are upsampled from there.
    """
    return build_segmenter(entry, entry.backbone, create_mask2former_head, pretrained=pretrained,
                           segmenter_cls=MaskClassificationSegmenter, **kwargs)
