"""SegFormer decode head over every backbone: ``segformer_{backbone}``.

Over a ViT the four same-stride maps go through the pyramid neck first; over MiT
(``segformer_mit_b*``), the original SegFormer, the encoder's own strides 4-32 feed the head
directly and NVIDIA's published transformers files load whole.
"""

from __future__ import annotations

from typing import Any

from .._registry import ModelEntry
from ..heads import create_segformer_head
from ._builder import build_segmenter
from .segmenter import Segmenter

__all__ = ["build"]


def build(entry: ModelEntry, pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """Head options: ``decoder_hidden_size``, ``dropout`` (see :func:`segzoo.heads.create_segformer_head`;
    MiT-b2..b5 default to the 768-wide head their published weights have). ``num_classes``
    defaults to a fine-tuned tag's (150 for ``ade20k``, 19 for ``cityscapes``)."""
    return build_segmenter(entry, entry.backbone, create_segformer_head, pretrained=pretrained, **kwargs)
