"""Segmenters and the registered model factories (importing a model file registers its names)."""

from . import mask2former, segformer, segformer_mit, upernet
from ._builder import build_segmenter
from .mask_classification import MaskClassificationSegmenter
from .segmenter import Segmenter

__all__ = [
    "MaskClassificationSegmenter",
    "Segmenter",
    "build_segmenter",
    "mask2former",
    "segformer",
    "segformer_mit",
    "upernet",
]
