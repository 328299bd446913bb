"""ViT foundation backbones over timm models, one spec per family."""

from .specs import BACKBONES, BackboneSpec, default_feature_indices, get_backbone_spec
from .vit import ViTBackbone, create_vit_backbone, published_weights_source

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "ViTBackbone",
    "create_vit_backbone",
    "default_feature_indices",
    "get_backbone_spec",
    "published_weights_source",
]
