"""Optimizer parameter groups for fine-tuning a ViT segmenter.

Two rules that fine-tuning recipes for ViTs (BEiT, MAE, DINOv2 linear/segmentation
evaluations) share:

- no weight decay on parameters that set a scale or an offset rather than a feature
  (norm weights, biases, layer-scale gammas, every 1-D tensor) or that are embeddings
  (position embeddings, class/register/mask tokens): decaying them toward zero only
  hurts;
- layer-wise learning-rate decay: block ``i`` of an ``L``-block ViT trains at
  ``lr * layer_decay ** (L - i)``, the patch embedding and tokens at
  ``lr * layer_decay ** (L + 1)``, so early, generic features move least. The freshly
  initialised neck and head train at ``lr * head_lr_mult``.

LoRA adapters belong to the block of the layer they adapt, so they decay like it.
Frozen parameters are left out (the optimizer never sees them).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

__all__ = ["param_groups", "layer_id_of"]

# embeddings and tokens of timm ViTs (VisionTransformer, Eva); matched as the last name component
_NO_DECAY_NAMES = {"pos_embed", "cls_token", "reg_token", "mask_token", "dist_token", "pos_embed_window"}
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    head_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim.AdamW(param_groups(model, lr=1e-4))``.

    Args:
        model: a :class:`segzoo.Segmenter` (its ``backbone.model`` is the timm ViT).
        lr: learning rate of the top of the network (head, neck, last block before decay).
        weight_decay: applied to weight matrices and convolution kernels only.
        layer_decay: per-block LR factor in (0, 1]; 1.0 turns layer-wise decay off.
        head_lr_mult: LR multiplier of the neck and head relative to ``lr``.

    Returns:
        one dict per (learning rate, weight decay) pair with ``params``, ``lr``,
        ``weight_decay``, ``lr_scale`` (the group's factor on ``lr``, for schedulers that
        rescale groups) and ``param_names`` (for inspection; optimizers ignore it).
    """
    _check(lr, weight_decay, layer_decay, head_lr_mult)
    num_blocks = _num_blocks(model, needed=layer_decay != 1.0)
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id_of(name, num_blocks)
        if layer > num_blocks:  # neck, head, anything after the last block
            scale = head_lr_mult if not name.startswith("backbone.") else 1.0
        else:
            scale = layer_decay ** (num_blocks + 1 - layer)
        decay = not _is_no_decay(name, param)
        key = (scale, decay)
        if key not in groups:
            groups[key] = dict(
                params=[], param_names=[], lr=lr * scale, lr_scale=scale, weight_decay=weight_decay if decay else 0.0
            )
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    if not groups:
        raise ValueError(
            "model has no trainable parameters: unfreeze something (or apply LoRA) before building an optimizer"
        )
    return sorted(groups.values(), key=lambda g: (g["lr_scale"], g["weight_decay"]))


def layer_id_of(name: str, num_blocks: int) -> int:
    """Depth of a parameter for layer-wise decay: 0 for the patch embedding, tokens and
    position embeddings, ``i + 1`` for block ``i`` (its LoRA adapters included), and
    ``num_blocks + 1`` for everything after the blocks (neck, head)."""
    if not name.startswith("backbone."):
        return num_blocks + 1
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    if any(part in name for part in ("patch_embed", "pos_embed", "cls_token", "reg_token", "mask_token", "rope")):
        return 0
    return num_blocks + 1  # a final norm kept by the backbone


# -- helpers -------------------------------------------------------------------------------


def _is_no_decay(name: str, param: nn.Parameter) -> bool:
    last = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or last == "bias" or last in _NO_DECAY_NAMES


def _num_blocks(model: nn.Module, needed: bool = True) -> int:
    """Blocks of the plain ViT; 0 for other encoders (MiT), which then only work without layer decay."""
    backbone = getattr(model, "backbone", None)
    blocks = getattr(getattr(backbone, "model", None), "blocks", None)
    if blocks is None and (needed or backbone is None):
        raise TypeError(
            f"layer-wise LR decay needs a segzoo ViT model (with .backbone.model.blocks), got "
            f"{type(model).__name__}{' with a ' + type(backbone).__name__ if backbone is not None else ''}; "
            "pass layer_decay=1.0 for other encoders"
        )
    return len(blocks) if blocks is not None else 0


def _check(lr: float, weight_decay: float, layer_decay: float, head_lr_mult: float) -> None:
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1] (1.0 disables layer-wise decay), got {layer_decay!r}")
    if not head_lr_mult > 0:
        raise ValueError(f"head_lr_mult must be > 0, got {head_lr_mult!r}")
