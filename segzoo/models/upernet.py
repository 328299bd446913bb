"""UperNet (pyramid pooling + FPN) on ViT foundation backbones: ``upernet_{backbone}``."""

from __future__ import annotations

from typing import Any

from .._registry import ModelEntry
from ..heads import create_upernet_head
from ._builder import build_segmenter
from .segmenter import Segmenter

__all__ = ["build"]


def build(entry: ModelEntry, pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """Head options: ``decoder_hidden_size`` (UperNet's channel width), ``pool_scales``;
    see :func:`segzoo.heads.create_upernet_head`."""
    return build_segmenter(entry, entry.backbone, create_upernet_head, pretrained=pretrained, **kwargs)
