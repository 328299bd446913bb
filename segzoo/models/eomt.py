"""EoMT (encoder-only mask transformer) on ViT foundation backbones: ``eomt_{family}_{size}``.

The queries run through the backbone's last ``num_blocks`` timm blocks; there is no neck
and no pixel decoder (see :class:`EomtSegmenter`). In ``train()`` these models return set
outputs and train with ``model.compute_loss``; in ``eval()`` they return semantic
log-probabilities; ``model.set_mask_annealing(progress)`` anneals the masked attention."""

from __future__ import annotations

from typing import Any

from .._registry import register_model, register_pretrained_cfgs
from ..backbones import BACKBONES
from ..heads import create_eomt_head
from ._builder import build_segmenter, pretrained_cfgs_for
from .eomt_segmenter import EomtSegmenter

__all__: list[str] = []  # register_model appends the factory names


def _create_eomt(variant: str, backbone: str, pretrained: bool = False, **kwargs: Any) -> EomtSegmenter:
    """Head options: ``num_queries`` (default 100), ``num_blocks`` (4: the last ViT blocks
    that see the queries), ``num_upscale_blocks`` (2: masks at a quarter of the patch size),
    ``deep_supervision`` (True) and the loss weights; see :func:`segzoo.heads.create_eomt_head`.
    """
    for name, why in (("neck", "it reads the ViT's tokens directly"),
                      ("feature_indices", "it reads the last block, with the queries in the last num_blocks")):
        if name in kwargs:
            raise ValueError(f"{variant} takes no {name} ({why}); leave {name} out")
    return build_segmenter(
        variant, backbone, create_eomt_head, pretrained=pretrained, neck="none", keep_backbone_norm=True,
        segmenter_cls=EomtSegmenter, **kwargs,
    )


register_pretrained_cfgs(
    cfg for spec in BACKBONES.values() for cfg in pretrained_cfgs_for(f"eomt_{spec.name}", spec)
)


@register_model
def eomt_dinov3_small(pretrained: bool = False, **kwargs: Any) -> EomtSegmenter:
    """EoMT on DINOv3 ViT-S/16."""
    return _create_eomt("eomt_dinov3_small", "dinov3_small", pretrained, **kwargs)


@register_model
def eomt_dinov3_base(pretrained: bool = False, **kwargs: Any) -> EomtSegmenter:
    """EoMT on DINOv3 ViT-B/16."""
    return _create_eomt("eomt_dinov3_base", "dinov3_base", pretrained, **kwargs)


@register_model
def eomt_dinov3_large(pretrained: bool = False, **kwargs: Any) -> EomtSegmenter:
    """EoMT on DINOv3 ViT-L/16."""
    return _create_eomt("eomt_dinov3_large", "dinov3_large", pretrained, **kwargs)


@register_model
def eomt_dinov2_small(pretrained: bool = False, **kwargs: Any) -> EomtSegmenter:
    """EoMT on DINOv2 ViT-S/14."""
    return _create_eomt("eomt_dinov2_small", "dinov2_small", pretrained, **kwargs)


@register_model
def eomt_dinov2_base(pretrained: bool = False, **kwargs: Any) -> EomtSegmenter:
    """EoMT on DINOv2 ViT-B/14."""
    return _create_eomt("eomt_dinov2_base", "dinov2_base", pretrained, **kwargs)


@register_model
def eomt_dinov2_large(pretrained: bool = False, **kwargs: Any) -> EomtSegmenter:
    """EoMT on DINOv2 ViT-L/14."""
    return _create_eomt("eomt_dinov2_large", "dinov2_large", pretrained, **kwargs)


@register_model
def eomt_dinov2_giant(pretrained: bool = False, **kwargs: Any) -> EomtSegmenter:
    """EoMT on DINOv2 ViT-g/14."""
    return _create_eomt("eomt_dinov2_giant", "dinov2_giant", pretrained, **kwargs)


@register_model
def eomt_dinov2_reg4_small(pretrained: bool = False, **kwargs: Any) -> EomtSegmenter:
    """EoMT on DINOv2 ViT-S/14 with 4 registers."""
    return _create_eomt("eomt_dinov2_reg4_small", "dinov2_reg4_small", pretrained, **kwargs)


@register_model
def eomt_dinov2_reg4_base(pretrained: bool = False, **kwargs: Any) -> EomtSegmenter:
    """EoMT on DINOv2 ViT-B/14 with 4 registers."""
    return _create_eomt("eomt_dinov2_reg4_base", "dinov2_reg4_base", pretrained, **kwargs)


@register_model
def eomt_dinov2_reg4_large(pretrained: bool = False, **kwargs: Any) -> EomtSegmenter:
    """EoMT on DINOv2 ViT-L/14 with 4 registers."""
    return _create_eomt("eomt_dinov2_reg4_large", "dinov2_reg4_large", pretrained, **kwargs)


@register_model
def eomt_dinov2_reg4_giant(pretrained: bool = False, **kwargs: Any) -> EomtSegmenter:
    """EoMT on DINOv2 ViT-g/14 with 4 registers."""
    return _create_eomt("eomt_dinov2_reg4_giant", "dinov2_reg4_giant", pretrained, **kwargs)


@register_model
def eomt_retfound_large(pretrained: bool = False, **kwargs: Any) -> EomtSegmenter:
    """EoMT on RETFound ViT-L/16 (MAE; colour-fundus and OCT weights)."""
    return _create_eomt("eomt_retfound_large", "retfound_large", pretrained, **kwargs)


@register_model
def eomt_retfound_dinov2_large(pretrained: bool = False, **kwargs: Any) -> EomtSegmenter:
    """EoMT on RETFound ViT-L/14 (DINOv2 objective)."""
    return _create_eomt("eomt_retfound_dinov2_large", "retfound_dinov2_large", pretrained, **kwargs)


@register_model
def eomt_visionfm_base(pretrained: bool = False, **kwargs: Any) -> EomtSegmenter:
    """EoMT on VisionFM ViT-B/16 (ophthalmic modalities)."""
    return _create_eomt("eomt_visionfm_base", "visionfm_base", pretrained, **kwargs)
