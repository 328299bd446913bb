"""Backbones: the specs (data, no torch) and the encoders of each kind (a timm ViT, transformers' MiT)."""

from __future__ import annotations

import importlib
from typing import Any

from .specs import BACKBONES, BackboneSpec, default_feature_indices, get_backbone_spec, published_weights_source

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "MiTBackbone",
    "ViTBackbone",
    "default_feature_indices",
    "get_backbone_spec",
    "published_weights_source",
]

# imported on first use: the specs alone answer listing questions without torch or timm
_LAZY = {"ViTBackbone": ".vit",
         "MiTBackbone": ".mit"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
