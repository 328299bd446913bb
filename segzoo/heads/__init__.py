"""Decode heads: feature pyramids in, class logits (or mask-classification outputs) out."""

from .dpt import DPTDecodeHead, create_dpt_head
from .eomt import EomtHead, create_eomt_head
from .mask2former import Mask2FormerHead, create_mask2former_head
from .segformer import create_segformer_head
from .upernet import UperNetDecodeHead, create_upernet_head

__all__ = [
    "DPTDecodeHead",
    "EomtHead",
    "create_eomt_head",
    "Mask2FormerHead",
    "UperNetDecodeHead",
    "create_dpt_head",
    "create_mask2former_head",
    "create_segformer_head",
    "create_upernet_head",
]
