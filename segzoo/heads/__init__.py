"""Decode heads: feature pyramids in, class logits out."""

from .segformer import create_segformer_head

__all__ = ["create_segformer_head"]
