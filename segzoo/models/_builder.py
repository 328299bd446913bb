"""Shared builder: registry entry (or backbone spec) + neck + a head factory -> Segmenter.

Knows nothing about particular decoders or encoders: each head's model file passes its head
factory, and the backbone spec's kind module builds and loads the encoder (a timm ViT,
transformers' MiT), so every model goes through the same checks, weights and load report.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import nn

from .._hub import download_backbone_weights
from .._pretrained import PretrainedCfg
from .._registry import ModelEntry, _entries
from .._validation import accepted_keywords, one_weights_source, positive_int, reject_unknown_keywords
from ..backbones.specs import BackboneSpec, get_backbone_spec, published_weights_source
from ..necks import create_neck
from .segmenter import Segmenter

__all__ = ["adapt_normalization", "build_entry", "build_segmenter"]

HeadFactory = Callable[..., nn.Module]  # (in_channels, num_classes, **head_kwargs) -> module
# build_segmenter's parameters that model files pass, never users
_INTERNAL = ("variant", "backbone", "head_factory", "segmenter_cls", "in_channels", "pretrained_tag",
             "pretrained_cfg", "keep_backbone_norm", "default_neck")


def build_segmenter(
    variant: str | ModelEntry,
    backbone: str | BackboneSpec,
    head_factory: HeadFactory,
    pretrained: bool = False,
    pretrained_cfg: PretrainedCfg | None = None,
    num_classes: int | None = None,
    in_chans: int = 3,
    neck: str | None = None,
    feature_indices: Sequence[int] | None = None,
    drop_path_rate: float | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    freeze_backbone: bool = False,
    grad_checkpointing: bool = False,
    img_size: int | tuple[int, int] | None = None,
    segmenter_cls: type[Segmenter] = Segmenter,
    checkpoint_path: str | None = None,
    checkpoint_format: str | None = None,
    keep_backbone_norm: bool = False,
    default_neck: str | None = None,
    pretrained_tag: str | None = None,
    **head_kwargs: Any,
) -> Segmenter:
    """Build ``variant`` = ``head_factory`` on the ``backbone`` spec (or its name).

    Common keyword arguments of every zoo model: ``num_classes`` (default: a fine-tuned
    tag's), ``in_chans``, ``neck`` ("pyramid" | "dpt" | "none"; default: the head's, else
    the backbone's), ``feature_indices``, ``drop_path_rate``, ``backbone_kwargs`` (the
    encoder's constructor arguments, e.g. tiny test sizes), ``freeze_backbone``,
    ``grad_checkpointing``, ``img_size`` (fix the input size, for ``torch.compile``),
    ``checkpoint_path`` / ``checkpoint_format`` (weights in their original published
    layout). Everything else goes to the head. ``pretrained_cfg`` is the weight set
    :func:`segzoo.create_model` resolved (``pretrained_tag`` names one instead, for calls
    that bypass it). ``segmenter_cls``, ``keep_backbone_norm`` and ``default_neck`` are chosen by the head's
    model file, never by users.
    """
    entry = variant if isinstance(variant, ModelEntry) else _entries.get(variant)
    name = entry.name if entry is not None else str(variant)
    spec = backbone if isinstance(backbone, BackboneSpec) else get_backbone_spec(backbone)
    # typos are named before anything is built or downloaded (a head kwarg would fail only after the backbone)
    reject_unknown_keywords(name, head_kwargs, accepted_keywords(build_segmenter, head_factory, skip=_INTERNAL))
    if pretrained_cfg is None:
        pretrained_cfg = entry.pretrained_cfg(pretrained_tag) if entry is not None and entry.pretrained_cfgs \
            else spec.weights_for(pretrained_tag)
    if num_classes is None and pretrained_cfg is not None and pretrained_cfg.weights_scope == "full":
        num_classes = pretrained_cfg.num_classes  # a fine-tuned model's own classes
    num_classes = positive_int("num_classes", num_classes, "the number of classes, background included")
    in_chans = positive_int("in_chans", in_chans, "1 for grey-scale (OCT, CT), 3 for RGB")
    one_weights_source(pretrained, checkpoint_path)
    source = published_weights_source(spec, pretrained_cfg) if pretrained else None  # not on the Hub: say so now
    kind = spec.backbone_module()
    neck = _choose_neck(name, neck, default_neck, kind.BACKBONE_CLASS)
    fixed_size = _fixed_input_size(img_size, int((backbone_kwargs or {}).get("patch_size", spec.patch_size)))
    encoder = kind.create_backbone(spec, in_chans=in_chans, feature_indices=feature_indices,
                                   drop_path_rate=drop_path_rate, backbone_kwargs=backbone_kwargs, img_size=fixed_size,
                                   keep_norm=keep_backbone_norm)
    neck_module = create_neck(neck, encoder.out_channels)
    head_options = accepted_keywords(head_factory)
    head_kwargs = {**{k: v for k, v in spec.head_kwargs.items() if k in head_options}, **head_kwargs}
    head = head_factory(neck_module.out_channels, num_classes, **head_kwargs)
    model = segmenter_cls(
        encoder, neck_module, head, num_classes, pretrained_cfg=_model_pretrained_cfg(spec, pretrained_cfg, encoder),
        fixed_input_size=fixed_size,
    )
    if source is not None:
        checkpoint_path = download_backbone_weights(source)
        checkpoint_format = checkpoint_format or source.checkpoint_format
    if checkpoint_path is not None:
        encoder.load_checkpoint(model, checkpoint_path, checkpoint_format)
    if freeze_backbone:
        model.freeze_backbone()
    if grad_checkpointing:
        model.set_grad_checkpointing()
    return model


def build_entry(entry: ModelEntry, pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """Build a zoo entry: its head's factory over its backbone spec, with the options the head fixes.

    Every zoo model takes the common options of :func:`build_segmenter`; the head's own options
    are its factory's keywords (``segzoo.heads``).
    """
    head = entry.head
    fixed: dict[str, Any] = {}
    for option, value, why in head.fixed:
        if option in kwargs:
            raise ValueError(f"{entry.name} takes no {option} ({why}); leave {option} out")
        if value is not None:
            fixed[option] = value
    return build_segmenter(entry, entry.backbone, head.head_factory(), pretrained=pretrained,
                           segmenter_cls=head.segmenter_class(), default_neck=head.default_neck, **fixed, **kwargs)


def _choose_neck(name: str, neck: str | None, head_default: str | None, backbone_cls: type) -> str:
    """The user's neck, else the head's default, else the backbone's; a backbone that is already a
    pyramid (MiT) takes only its own."""
    choices = backbone_cls.neck_choices
    if neck is None:
        neck = head_default if head_default and (choices is None or head_default in choices) \
            else backbone_cls.default_neck
    if choices is not None and neck not in choices:
        raise ValueError(f"{name} has a hierarchical encoder (strides 4-32) and takes no neck; got neck={neck!r}")
    return neck


def _model_pretrained_cfg(spec: BackboneSpec, cfg: PretrainedCfg | None, encoder: nn.Module) -> dict[str, Any]:
    """``model.pretrained_cfg``: the weight set's record plus what this build settled."""
    if cfg is None:  # a spec without published weights
        mean, std = spec.normalization()
        cfg = PretrainedCfg("", backbone=spec.name, license=spec.license, license_name=spec.license_name,
                            license_link=spec.license_link, source=spec.source, mean=mean, std=std)
    out = cfg.to_dict()
    out.update(encoder.build_facts())
    return adapt_normalization(out, encoder.in_chans)


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
