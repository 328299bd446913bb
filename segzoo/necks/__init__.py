"""Necks turn a plain ViT's same-stride maps into what a decoder expects."""

from __future__ import annotations

from torch import nn

from .dpt import DPTReassemble
from .identity import IdentityNeck
from .pyramid import SimpleFeaturePyramid

__all__ = ["NECKS", "DPTReassemble", "IdentityNeck", "SimpleFeaturePyramid", "create_neck"]

NECKS: dict[str, type[nn.Module]] = {"pyramid": SimpleFeaturePyramid, "dpt": DPTReassemble, "none": IdentityNeck}


def create_neck(name: str, in_channels: list[int]) -> nn.Module:
    """``"pyramid"`` (strides 4/8/16/32, ViTDet's layers; the default), ``"dpt"`` (the same strides, DPT's
    reassemble layers; the DPT head's default) or ``"none"`` (the four same-stride maps, a compatibility layout)."""
    if name not in NECKS:
        raise ValueError(f"Unknown neck {name!r}; choose one of {sorted(NECKS)}")
    return NECKS[name](in_channels)
