"""DPT (dense prediction transformer) on ViT foundation backbones: ``dpt_{family}_{size}``."""

from __future__ import annotations

from typing import Any

from .._registry import register_model, register_pretrained_cfgs
from ..backbones import BACKBONES
from ..heads import create_dpt_head
from ._builder import build_segmenter, pretrained_cfgs_for
from .segmenter import Segmenter

__all__: list[str] = []  # register_model appends the factory names


def _create_dpt(variant: str, backbone: str, pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """DPT's reassemble stage is the ``"dpt"`` neck (the default here; ``"pyramid"`` and
    ``"none"`` work too), its fusion blocks and segmentation head the decode head. Head
    options: ``decoder_hidden_size`` (the fusion width, default 256), ``dropout`` (0.1)."""
    kwargs.setdefault("neck", "dpt")
    return build_segmenter(variant, backbone, create_dpt_head, pretrained=pretrained, **kwargs)


register_pretrained_cfgs(
    cfg for spec in BACKBONES.values() for cfg in pretrained_cfgs_for(f"dpt_{spec.name}", spec)
)


@register_model
def dpt_dinov3_small(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """DPT decoder on DINOv3 ViT-S/16."""
    return _create_dpt("dpt_dinov3_small", "dinov3_small", pretrained, **kwargs)


@register_model
def dpt_dinov3_base(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """DPT decoder on DINOv3 ViT-B/16."""
    return _create_dpt("dpt_dinov3_base", "dinov3_base", pretrained, **kwargs)


@register_model
def dpt_dinov3_large(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """DPT decoder on DINOv3 ViT-L/16."""
    return _create_dpt("dpt_dinov3_large", "dinov3_large", pretrained, **kwargs)


@register_model
def dpt_dinov2_small(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """DPT decoder on DINOv2 ViT-S/14."""
    return _create_dpt("dpt_dinov2_small", "dinov2_small", pretrained, **kwargs)


@register_model
def dpt_dinov2_base(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """DPT decoder on DINOv2 ViT-B/14."""
    return _create_dpt("dpt_dinov2_base", "dinov2_base", pretrained, **kwargs)


@register_model
def dpt_dinov2_large(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """DPT decoder on DINOv2 ViT-L/14."""
    return _create_dpt("dpt_dinov2_large", "dinov2_large", pretrained, **kwargs)


@register_model
def dpt_dinov2_giant(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """DPT decoder on DINOv2 ViT-g/14."""
    return _create_dpt("dpt_dinov2_giant", "dinov2_giant", pretrained, **kwargs)


@register_model
def dpt_dinov2_reg4_small(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """DPT decoder on DINOv2 ViT-S/14 with 4 registers."""
    return _create_dpt("dpt_dinov2_reg4_small", "dinov2_reg4_small", pretrained, **kwargs)


@register_model
def dpt_dinov2_reg4_base(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """DPT decoder on DINOv2 ViT-B/14 with 4 registers."""
    return _create_dpt("dpt_dinov2_reg4_base", "dinov2_reg4_base", pretrained, **kwargs)


@register_model
def dpt_dinov2_reg4_large(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """DPT decoder on DINOv2 ViT-L/14 with 4 registers."""
    return _create_dpt("dpt_dinov2_reg4_large", "dinov2_reg4_large", pretrained, **kwargs)


@register_model
def dpt_dinov2_reg4_giant(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """DPT decoder on DINOv2 ViT-g/14 with 4 registers."""
    return _create_dpt("dpt_dinov2_reg4_giant", "dinov2_reg4_giant", pretrained, **kwargs)


@register_model
def dpt_retfound_large(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """DPT decoder on RETFound ViT-L/16 (MAE; colour-fundus and OCT weights)."""
    return _create_dpt("dpt_retfound_large", "retfound_large", pretrained, **kwargs)


@register_model
def dpt_retfound_dinov2_large(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """DPT decoder on RETFound ViT-L/14 (DINOv2 objective)."""
    return _create_dpt("dpt_retfound_dinov2_large", "retfound_dinov2_large", pretrained, **kwargs)


@register_model
def dpt_visionfm_base(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """DPT decoder on VisionFM ViT-B/16 (ophthalmic modalities)."""
    return _create_dpt("dpt_visionfm_base", "visionfm_base", pretrained, **kwargs)
