"""Compatibility names (docs/compatibility.md), kept as thin aliases over :func:`segzoo.create_model`."""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from ._factory import create_model

__all__ = ["create_segformer_model"]


def create_segformer_model(
    backbone_name: str = "dinov3",
    backbone_size: str = "large",
    num_classes: int | None = None,
    decoder_hidden_size: int = 256,
    checkpoint_path: str | None = None,
    freeze_backbone: bool = False,
    use_lora: bool = True,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.05,
    lora_target_modules: Sequence[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``create_segformer_model(backbone_name="dinov3", backbone_size="large", ...)`` (compatibility name).

    Same as ``segzoo.create_model(f"segformer_{backbone_name}_{backbone_size}", ...)`` with
    ``lora=dict(r=lora_rank, alpha=lora_alpha, dropout=lora_dropout, target_modules=...)``
    when ``use_lora``. Extra ``kwargs`` (``neck=``, ``backbone_kwargs=`` ...) go to ``create_model``.
    ``num_classes`` is required, as in ``create_model``: there is no sensible default.
    """
    if checkpoint_path is not None:
        kwargs["checkpoint_path"] = checkpoint_path
    if use_lora:
        kwargs["lora"] = dict(
            r=lora_rank, alpha=lora_alpha, dropout=lora_dropout, target_modules=list(lora_target_modules or ["qkv"])
        )
    return create_model(
        f"segformer_{backbone_name}_{backbone_size}",
        num_classes=num_classes,
        decoder_hidden_size=decoder_hidden_size,
        freeze_backbone=freeze_backbone,
        **kwargs,
    )
