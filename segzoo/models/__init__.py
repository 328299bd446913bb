"""Segmenters (per-pixel, mask-classification, EoMT) and the builder every zoo model goes through."""

from __future__ import annotations

from .._registry import model_entry
from ._builder import build_entry, build_segmenter
from .eomt_segmenter import EomtSegmenter
from .mask_classification import MaskClassificationSegmenter
from .segmenter import Segmenter

__all__ = [
    "EomtSegmenter",
    "MaskClassificationSegmenter",
    "Segmenter",
    "build_entry",
    "build_segmenter",
    "supports_lora",
]


def supports_lora(model_name: str) -> bool | None:
    """Whether a registered model's backbone takes LoRA, asked of its backbone (the ViT families'
    do; MiT's fine-tunes fully). ``None`` for a model registered without naming its backbone:
    the built model's backbone answers then."""
    return model_entry(model_name).supports_lora
