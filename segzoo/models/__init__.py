"""Segmenters and the registered model factories (importing a model file registers its names)."""

from .._registry import get_pretrained_cfg, split_model_name_tag
from ..backbones import BACKBONES
from . import dpt, eomt, mask2former, segformer, segformer_mit, upernet
from ._builder import build_segmenter
from .eomt_segmenter import EomtSegmenter
from .mask_classification import MaskClassificationSegmenter
from .segmenter import Segmenter

__all__ = [
    "EomtSegmenter",
    "MaskClassificationSegmenter",
    "Segmenter",
    "build_segmenter",
    "dpt",
    "supports_lora",
    "eomt",
    "mask2former",
    "segformer",
    "segformer_mit",
    "upernet",
]


def supports_lora(model_name: str) -> bool:
    """Whether a registered model's backbone takes LoRA: the ViT families' do; MiT's
    (``segformer_mit_*``, transformers' own layers) fine-tunes fully instead."""
    arch, tag = split_model_name_tag(model_name)
    cfg = get_pretrained_cfg(f"{arch}.{tag}" if tag else arch, allow_missing=True)
    return cfg is not None and cfg.backbone in BACKBONES
