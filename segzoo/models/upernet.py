"""UperNet (pyramid pooling + FPN) on ViT foundation backbones: ``upernet_{family}_{size}``."""

from __future__ import annotations

from typing import Any

from .._registry import register_model, register_pretrained_cfgs
from ..backbones import BACKBONES
from ..heads import create_upernet_head
from ._builder import build_segmenter, pretrained_cfgs_for
from .segmenter import Segmenter

__all__: list[str] = []  # register_model appends the factory names


def _create_upernet(variant: str, backbone: str, pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """Head options: ``decoder_hidden_size`` (UperNet's channel width, default 512),
    ``pool_scales`` (default (1, 2, 3, 6))."""
    return build_segmenter(variant, backbone, create_upernet_head, pretrained=pretrained, **kwargs)


register_pretrained_cfgs(
    cfg for spec in BACKBONES.values() for cfg in pretrained_cfgs_for(f"upernet_{spec.name}", spec)
)


@register_model
def upernet_dinov3_small(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """UperNet head on DINOv3 ViT-S/16."""
    return _create_upernet("upernet_dinov3_small", "dinov3_small", pretrained, **kwargs)


@register_model
def upernet_dinov3_base(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """UperNet head on DINOv3 ViT-B/16."""
    return _create_upernet("upernet_dinov3_base", "dinov3_base", pretrained, **kwargs)


@register_model
def upernet_dinov3_large(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """UperNet head on DINOv3 ViT-L/16."""
    return _create_upernet("upernet_dinov3_large", "dinov3_large", pretrained, **kwargs)


@register_model
def upernet_dinov2_small(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """UperNet head on DINOv2 ViT-S/14."""
    return _create_upernet("upernet_dinov2_small", "dinov2_small", pretrained, **kwargs)


@register_model
def upernet_dinov2_base(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """UperNet head on DINOv2 ViT-B/14."""
    return _create_upernet("upernet_dinov2_base", "dinov2_base", pretrained, **kwargs)


@register_model
def upernet_dinov2_large(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """UperNet head on DINOv2 ViT-L/14."""
    return _create_upernet("upernet_dinov2_large", "dinov2_large", pretrained, **kwargs)


@register_model
def upernet_dinov2_giant(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """UperNet head on DINOv2 ViT-g/14."""
    return _create_upernet("upernet_dinov2_giant", "dinov2_giant", pretrained, **kwargs)


@register_model
def upernet_dinov2_reg4_small(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """UperNet head on DINOv2 ViT-S/14 with 4 registers."""
    return _create_upernet("upernet_dinov2_reg4_small", "dinov2_reg4_small", pretrained, **kwargs)


@register_model
def upernet_dinov2_reg4_base(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """UperNet head on DINOv2 ViT-B/14 with 4 registers."""
    return _create_upernet("upernet_dinov2_reg4_base", "dinov2_reg4_base", pretrained, **kwargs)


@register_model
def upernet_dinov2_reg4_large(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """UperNet head on DINOv2 ViT-L/14 with 4 registers."""
    return _create_upernet("upernet_dinov2_reg4_large", "dinov2_reg4_large", pretrained, **kwargs)


@register_model
def upernet_dinov2_reg4_giant(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """UperNet head on DINOv2 ViT-g/14 with 4 registers."""
    return _create_upernet("upernet_dinov2_reg4_giant", "dinov2_reg4_giant", pretrained, **kwargs)


@register_model
def upernet_retfound_large(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """UperNet head on RETFound ViT-L/16 (MAE; colour-fundus and OCT weights)."""
    return _create_upernet("upernet_retfound_large", "retfound_large", pretrained, **kwargs)


@register_model
def upernet_retfound_dinov2_large(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """UperNet head on RETFound ViT-L/14 (DINOv2 objective)."""
    return _create_upernet("upernet_retfound_dinov2_large", "retfound_dinov2_large", pretrained, **kwargs)


@register_model
def upernet_visionfm_base(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """UperNet head on VisionFM ViT-B/16 (ophthalmic modalities)."""
    return _create_upernet("upernet_visionfm_base", "visionfm_base", pretrained, **kwargs)
