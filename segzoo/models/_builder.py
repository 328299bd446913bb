"""Shared builder: backbone spec + neck + a head factory -> Segmenter.

Knows nothing about particular decoders; each decoder's model file passes its head
factory and registers its names.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import nn

from .._pretrained import PretrainedCfg
from .._registry import get_pretrained_cfg
from .._validation import accepted_keywords, positive_int, reject_unknown_keywords
from ..backbones import BackboneSpec, create_vit_backbone, get_backbone_spec
from ..necks import create_neck
from .segmenter import Segmenter

__all__ = ["adapt_normalization", "build_segmenter", "pretrained_cfgs_for"]

HeadFactory = Callable[..., nn.Module]  # (in_channels, num_classes, **head_kwargs) -> module
# build_segmenter's parameters that model files pass, never users
_INTERNAL = ("variant", "backbone", "head_factory", "segmenter_cls", "in_channels", "pretrained_tag",
             "keep_backbone_norm")


def build_segmenter(
    variant: str,
    backbone: str,
    head_factory: HeadFactory,
    pretrained: bool = False,
    pretrained_tag: str | None = None,
    num_classes: int | None = None,
    in_chans: int = 3,
    neck: str = "pyramid",
    feature_indices: Sequence[int] | None = None,
    drop_path_rate: float = 0.0,
    backbone_kwargs: dict[str, Any] | None = None,
    freeze_backbone: bool = False,
    grad_checkpointing: bool = False,
    img_size: int | tuple[int, int] | None = None,
    segmenter_cls: type[Segmenter] = Segmenter,
    checkpoint_path: str | None = None,
    checkpoint_format: str | None = None,
    keep_backbone_norm: bool = False,
    **head_kwargs: Any,
) -> Segmenter:
    """Build ``variant`` = ``head_factory`` on the ``backbone`` family/size.

    Common keyword arguments of every zoo model: ``num_classes``, ``in_chans``,
    ``neck`` ("pyramid" | "none"), ``feature_indices``, ``drop_path_rate``,
    ``backbone_kwargs`` (passed to timm, e.g. tiny test sizes), ``freeze_backbone``,
    ``grad_checkpointing``, ``img_size`` (fix the input size, for ``torch.compile``),
    ``checkpoint_path`` / ``checkpoint_format`` (backbone weights in their original
    published layout). Everything else goes to the head. ``segmenter_cls`` is chosen by
    the decoder's model file (e.g. a mask-classification head needs
    :class:`~segzoo.models.MaskClassificationSegmenter`), never by users; so is
    ``keep_backbone_norm`` (EoMT reads the last block through the ViT's final norm).
    """
    # typos are named before anything is built or downloaded (a head kwarg would fail only after the backbone)
    reject_unknown_keywords(variant, head_kwargs, accepted_keywords(build_segmenter, head_factory, skip=_INTERNAL))
    num_classes = positive_int("num_classes", num_classes, "the number of classes, background included")
    in_chans = positive_int("in_chans", in_chans, "1 for grey-scale (OCT, CT), 3 for RGB")
    spec = get_backbone_spec(backbone)
    fixed_size = _fixed_input_size(img_size, spec.patch_size if not backbone_kwargs or "patch_size" not in backbone_kwargs
                                   else int(backbone_kwargs["patch_size"]))
    tag_cfg = get_pretrained_cfg(f"{variant}.{pretrained_tag}" if pretrained_tag else variant, allow_missing=True)
    vit = create_vit_backbone(
        spec,
        pretrained=pretrained,
        pretrained_tag=tag_cfg.tag if tag_cfg else None,
        in_chans=in_chans,
        feature_indices=feature_indices,
        drop_path_rate=drop_path_rate,
        backbone_kwargs=backbone_kwargs,
        img_size=fixed_size,
        checkpoint_path=checkpoint_path,
        checkpoint_format=checkpoint_format,
        keep_norm=keep_backbone_norm,
    )
    neck_module = create_neck(neck, vit.out_channels)
    head = head_factory(neck_module.out_channels, num_classes, **head_kwargs)
    model = segmenter_cls(
        vit, neck_module, head, num_classes, pretrained_cfg=_model_pretrained_cfg(spec, tag_cfg, vit),
        fixed_input_size=fixed_size,
    )
    if freeze_backbone:
        model.freeze_backbone()
    if grad_checkpointing:
        model.set_grad_checkpointing()
    return model


def pretrained_cfgs_for(variant: str, spec: BackboneSpec) -> list[PretrainedCfg]:
    """The backbone's published weight sets, registered under the model's name (first = default)."""
    return [cfg.for_model(variant) for cfg in spec.weights]


def _model_pretrained_cfg(spec: BackboneSpec, tag_cfg: PretrainedCfg | None, vit: nn.Module) -> dict[str, Any]:
    """``model.pretrained_cfg``: the weight set's record plus what this build settled."""
    if tag_cfg is not None:
        cfg = tag_cfg.to_dict()
    else:  # a spec without published weights
        mean, std = spec.normalization()
        cfg = PretrainedCfg("", backbone=spec.name, license=spec.license, source=spec.source, mean=mean,
                            std=std).to_dict()
    cfg.update(timm_arch=spec.timm_arch, patch_size=vit.patch_size, feature_indices=list(vit.feature_indices),
               in_chans=vit.in_chans)
    return adapt_normalization(cfg, vit.in_chans)


def adapt_normalization(cfg: dict[str, Any], in_chans: int) -> dict[str, Any]:
    """``cfg`` with mean/std for ``in_chans`` channels: timm's ``adapt_input_conv`` sums or
    repeats the RGB filters, so every channel is normalised alike with the RGB average."""
    if in_chans != len(cfg["mean"]):
        cfg["mean"] = [sum(cfg["mean"]) / len(cfg["mean"])] * in_chans
        cfg["std"] = [sum(cfg["std"]) / len(cfg["std"])] * in_chans
    return cfg


def _fixed_input_size(img_size: int | tuple[int, int] | None, patch_size: int) -> tuple[int, int] | None:
    if img_size is None:
        return None
    size = (img_size, img_size) if isinstance(img_size, int) else img_size
    valid = isinstance(size, (tuple, list)) and len(size) == 2 and all(
        isinstance(s, int) and s >= patch_size and s % patch_size == 0 for s in size
    )
    if not valid:
        raise ValueError(
            f"img_size must be an int or (H, W) of multiples of the patch size {patch_size}, "
            f"got {img_size!r}; e.g. img_size={32 * patch_size}"
        )
    return tuple(size)
