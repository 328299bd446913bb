"""Segmenter and the registered model factories (importing a model file registers its names)."""

from . import segformer
from .segmenter import Segmenter

__all__ = ["Segmenter", "segformer"]
