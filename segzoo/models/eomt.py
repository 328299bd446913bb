"""EoMT (encoder-only mask transformer) on ViT foundation backbones: ``eomt_{backbone}``.

The queries run through the backbone's last ``num_blocks`` timm blocks; there is no neck
and no pixel decoder (see :class:`EomtSegmenter`). In ``train()`` these models return set
outputs and train with ``model.compute_loss``; in ``eval()`` they return semantic
log-probabilities; ``model.set_mask_annealing(progress)`` anneals the masked attention."""

from __future__ import annotations

from typing import Any

from .._registry import ModelEntry
from ..heads import create_eomt_head
from ._builder import build_segmenter
from .eomt_segmenter import EomtSegmenter

__all__ = ["build"]


def build(entry: ModelEntry, pretrained: bool = False, **kwargs: Any) -> EomtSegmenter:
    """Head options: ``num_queries``, ``num_blocks`` (the last ViT blocks that see the queries),
    ``num_upscale_blocks`` (masks at a quarter of the patch size with 2), ``deep_supervision``
    and the loss weights; see :func:`segzoo.heads.create_eomt_head`."""
    for name, why in (("neck", "it reads the ViT's tokens directly"),
                      ("feature_indices", "it reads the last block, with the queries in the last num_blocks")):
        if name in kwargs:
            raise ValueError(f"{entry.name} takes no {name} ({why}); leave {name} out")
    return build_segmenter(entry, entry.backbone, create_eomt_head, pretrained=pretrained, neck="none",
                           keep_backbone_norm=True, segmenter_cls=EomtSegmenter, **kwargs)
