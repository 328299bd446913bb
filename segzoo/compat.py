"""Compatibility names of the SegFormer-in-nnU-Net fork segzoo replaces (docs/compatibility.md),
in one place: thin aliases over :func:`segzoo.create_model` and :mod:`segzoo.lora`. New code
should use the segzoo names; these stay so existing scripts keep working.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

from torch import nn

from ._factory import create_model
from .lora import apply_lora, has_lora, merge_lora

__all__ = ["create_segformer_model", "disable_lora", "enable_lora"]


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


def enable_lora(model: nn.Module, rank: int = 8, lora_alpha: float = 16.0, lora_dropout: float = 0.05,
                target_modules: Sequence[str] | None = None, verbose: bool = True) -> None:
    """``model.enable_lora(rank=8, lora_alpha=16.0, lora_dropout=0.05, target_modules=None)`` (compatibility
    name): :func:`segzoo.lora.apply_lora` (default target ``qkv``), then the trainable-parameter
    table unless ``verbose=False``."""
    apply_lora(model, r=rank, alpha=lora_alpha, dropout=lora_dropout, target_modules=target_modules)
    if verbose:
        print(f"LoRA enabled with rank={rank}, alpha={lora_alpha}")
        model.print_trainable_parameters(detailed=True)


def disable_lora(model: nn.Module) -> None:
    """``model.disable_lora()`` (compatibility name): :func:`segzoo.lora.merge_lora`, folding the
    adapters into the backbone. On a model without LoRA it warns (the original printed a
    notice) instead of raising, so scripts that call it unconditionally keep working."""
    if not has_lora(model):
        warnings.warn("disable_lora(): LoRA is not enabled on this model, nothing to merge", stacklevel=3)
        return
    merge_lora(model)
