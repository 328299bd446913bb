"""DPT (dense prediction transformer) on ViT foundation backbones: ``dpt_{backbone}``."""

from __future__ import annotations

from typing import Any

from .._registry import ModelEntry
from ..heads import create_dpt_head
from ._builder import build_segmenter
from .segmenter import Segmenter

__all__ = ["build"]


def build(entry: ModelEntry, pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """DPT's reassemble stage is the ``"dpt"`` neck (the default here; ``"pyramid"`` and
    ``"none"`` work too), its fusion blocks and segmentation head the decode head. Head
    options: ``decoder_hidden_size`` (the fusion width), ``dropout``; see
    :func:`segzoo.heads.create_dpt_head`."""
    return build_segmenter(entry, entry.backbone, create_dpt_head, pretrained=pretrained, default_neck="dpt", **kwargs)
