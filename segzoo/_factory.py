"""create_model: the front door. Registered names, pretrained tags, and the checks
that must fail early with a clear message."""

from __future__ import annotations

from typing import Any

from torch import nn

from ._registry import get_pretrained_cfg, model_entrypoint, split_model_name_tag

__all__ = ["create_model"]


def create_model(
    model_name: str,
    pretrained: bool = False,
    num_classes: int | None = None,
    in_chans: int = 3,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered zoo model by name.

    Args:
        model_name: a registered name, optionally with a pretrained tag
            (``"segformer_dinov3_large.lvd1689m"``); see :func:`segzoo.list_models`.
        pretrained: load the backbone's published weights (the tag's, else the
            model's default tag); decoder weights always start fresh.
        num_classes: number of output classes, background included.
        in_chans: input channels; pretrained patch-embedding filters are adapted
            (timm's ``adapt_input_conv``), not the input repeated.
        **kwargs: model options, e.g. ``neck="none"``, ``decoder_hidden_size=128``,
            ``feature_indices=[...]``, ``backbone_kwargs=dict(depth=2, embed_dim=64, num_heads=2)``,
            ``freeze_backbone=True``, ``grad_checkpointing=True``,
            ``lora=dict(r=8, alpha=16, dropout=0.05, target_modules=["qkv"])`` (peft LoRA on the
            backbone, base weights frozen; see :func:`segzoo.lora.apply_lora`).

    Returns:
        a :class:`segzoo.Segmenter` mapping ``(B, in_chans, H, W)`` to ``(B, num_classes, H, W)``.
    """
    if not isinstance(model_name, str) or not model_name:
        raise TypeError(f"model_name must be a non-empty string, got {model_name!r}")
    arch, tag = split_model_name_tag(model_name)
    entrypoint = model_entrypoint(arch)  # unknown name -> error naming the closest names
    if tag:
        get_pretrained_cfg(model_name)  # unknown tag -> error listing the model's tags
    lora = kwargs.pop("lora", None)
    model = entrypoint(
        pretrained=pretrained, pretrained_tag=tag or None, num_classes=num_classes, in_chans=in_chans, **kwargs
    )
    model.model_name = arch
    model.model_kwargs = dict(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if tag:
        model.model_kwargs["pretrained_tag"] = tag
    if lora is not None and lora is not False:  # last, after all weights are in: LoRA renames the targeted layers' keys
        _apply_lora_option(model, lora)
    return model


def _apply_lora_option(model: nn.Module, lora: Any) -> None:
    from .lora import apply_lora  # imported here: peft is only loaded when LoRA is asked for

    if lora is True:
        lora = {}
    if not isinstance(lora, dict):
        raise TypeError(
            f"lora must be a dict such as dict(r=8, alpha=16, dropout=0.05, target_modules=['qkv']), got {lora!r}"
        )
    allowed = {"r", "alpha", "dropout", "target_modules"}
    unknown = sorted(set(lora) - allowed)
    if unknown:
        raise TypeError(f"unknown lora option(s) {unknown}; allowed: {sorted(allowed)}")
    apply_lora(model, **lora)  # records model.model_kwargs["lora"]
