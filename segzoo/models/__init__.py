"""Segmenters and the registered model factories (importing a model file registers its names)."""

from . import mask2former, segformer, segformer_mit, upernet
from .mask_classification import MaskClassificationSegmenter
from .segmenter import Segmenter

__all__ = ["MaskClassificationSegmenter", "Segmenter", "mask2former", "segformer", "segformer_mit", "upernet"]
