"""Mask2Former (masked-attention mask transformer) on ViT foundation backbones:
``mask2former_{family}_{size}``.

In ``train()`` these models return set outputs and train with ``model.compute_loss``;
in ``eval()`` they return semantic log-probabilities (see :class:`MaskClassificationSegmenter`)."""

from __future__ import annotations

from typing import Any

from .._registry import register_model, register_pretrained_cfgs
from ..backbones import BACKBONES
from ..heads import create_mask2former_head
from ._builder import build_segmenter, pretrained_cfgs_for
from .mask_classification import MaskClassificationSegmenter

__all__: list[str] = []  # register_model appends the factory names


def _create_mask2former(
    variant: str, backbone: str, pretrained: bool = False, **kwargs: Any
) -> MaskClassificationSegmenter:
    """Head options: ``decoder_hidden_size`` (default 256), ``num_queries`` (100),
    ``decoder_layers`` (10), ``encoder_layers`` (6), ``num_attention_heads`` (8),
    ``dim_feedforward`` (2048), ``encoder_feedforward_dim`` (1024), ``deep_supervision``
    (True) and the loss weights; see :func:`segzoo.heads.create_mask2former_head`.

    With ``neck="none"`` the pixel decoder gets four same-stride maps: it still works
    (its FPN level and mask features are then at the backbone stride, not 4) and the
    masks are upsampled from there.
    """
    return build_segmenter(
        variant, backbone, create_mask2former_head, pretrained=pretrained,
        segmenter_cls=MaskClassificationSegmenter, **kwargs,
    )


register_pretrained_cfgs(
    cfg for spec in BACKBONES.values() for cfg in pretrained_cfgs_for(f"mask2former_{spec.name}", spec)
)


@register_model
def mask2former_dinov3_small(pretrained: bool = False, **kwargs: Any) -> MaskClassificationSegmenter:
    """Mask2Former head on DINOv3 ViT-S/16."""
    return _create_mask2former("mask2former_dinov3_small", "dinov3_small", pretrained, **kwargs)


@register_model
def mask2former_dinov3_base(pretrained: bool = False, **kwargs: Any) -> MaskClassificationSegmenter:
    """Mask2Former head on DINOv3 ViT-B/16."""
    return _create_mask2former("mask2former_dinov3_base", "dinov3_base", pretrained, **kwargs)


@register_model
def mask2former_dinov3_large(pretrained: bool = False, **kwargs: Any) -> MaskClassificationSegmenter:
    """Mask2Former head on DINOv3 ViT-L/16."""
    return _create_mask2former("mask2former_dinov3_large", "dinov3_large", pretrained, **kwargs)


@register_model
def mask2former_dinov2_small(pretrained: bool = False, **kwargs: Any) -> MaskClassificationSegmenter:
    """Mask2Former head on DINOv2 ViT-S/14."""
    return _create_mask2former("mask2former_dinov2_small", "dinov2_small", pretrained, **kwargs)


@register_model
def mask2former_dinov2_base(pretrained: bool = False, **kwargs: Any) -> MaskClassificationSegmenter:
    """Mask2Former head on DINOv2 ViT-B/14."""
    return _create_mask2former("mask2former_dinov2_base", "dinov2_base", pretrained, **kwargs)


@register_model
def mask2former_dinov2_large(pretrained: bool = False, **kwargs: Any) -> MaskClassificationSegmenter:
    """Mask2Former head on DINOv2 ViT-L/14."""
    return _create_mask2former("mask2former_dinov2_large", "dinov2_large", pretrained, **kwargs)


@register_model
def mask2former_dinov2_giant(pretrained: bool = False, **kwargs: Any) -> MaskClassificationSegmenter:
    """Mask2Former head on DINOv2 ViT-g/14."""
    return _create_mask2former("mask2former_dinov2_giant", "dinov2_giant", pretrained, **kwargs)


@register_model
def mask2former_dinov2_reg4_small(pretrained: bool = False, **kwargs: Any) -> MaskClassificationSegmenter:
    """Mask2Former head on DINOv2 ViT-S/14 with 4 registers."""
    return _create_mask2former("mask2former_dinov2_reg4_small", "dinov2_reg4_small", pretrained, **kwargs)


@register_model
def mask2former_dinov2_reg4_base(pretrained: bool = False, **kwargs: Any) -> MaskClassificationSegmenter:
    """Mask2Former head on DINOv2 ViT-B/14 with 4 registers."""
    return _create_mask2former("mask2former_dinov2_reg4_base", "dinov2_reg4_base", pretrained, **kwargs)


@register_model
def mask2former_dinov2_reg4_large(pretrained: bool = False, **kwargs: Any) -> MaskClassificationSegmenter:
    """Mask2Former head on DINOv2 ViT-L/14 with 4 registers."""
    return _create_mask2former("mask2former_dinov2_reg4_large", "dinov2_reg4_large", pretrained, **kwargs)


@register_model
def mask2former_dinov2_reg4_giant(pretrained: bool = False, **kwargs: Any) -> MaskClassificationSegmenter:
    """Mask2Former head on DINOv2 ViT-g/14 with 4 registers."""
    return _create_mask2former("mask2former_dinov2_reg4_giant", "dinov2_reg4_giant", pretrained, **kwargs)


@register_model
def mask2former_retfound_large(pretrained: bool = False, **kwargs: Any) -> MaskClassificationSegmenter:
    """Mask2Former head on RETFound ViT-L/16 (MAE; colour-fundus and OCT weights)."""
    return _create_mask2former("mask2former_retfound_large", "retfound_large", pretrained, **kwargs)


@register_model
def mask2former_retfound_dinov2_large(pretrained: bool = False, **kwargs: Any) -> MaskClassificationSegmenter:
    """Mask2Former head on RETFound ViT-L/14 (DINOv2 objective)."""
    return _create_mask2former("mask2former_retfound_dinov2_large", "retfound_dinov2_large", pretrained, **kwargs)


@register_model
def mask2former_visionfm_base(pretrained: bool = False, **kwargs: Any) -> MaskClassificationSegmenter:
    """Mask2Former head on VisionFM ViT-B/16 (ophthalmic modalities)."""
    return _create_mask2former("mask2former_visionfm_base", "visionfm_base", pretrained, **kwargs)
