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
  initialised neck and head train at ``lr * head_lr_mult``. A hierarchical MiT encoder
  (``segformer_mit_*``) decays stage-wise: its first patch embedding is layer 0 and
  stage ``s`` (its patch embedding, blocks and norm) layer ``s + 1``, as if each stage
  were one ViT block.

The layers are timm's: each backbone says which of its parameters form which layer
(``group_matcher``, in timm's format), ``Segmenter.group_matcher`` puts them under
``backbone.``, and :func:`timm.optim.param_groups_layer_decay` turns them into scales, so
timm's ``create_optimizer_v2(model, layer_decay=...)`` builds the same ones. This module adds
the head multiplier and the embedding names timm's 1-D rule misses.

LoRA adapters belong to the block of the layer they adapt, so they decay like it.
Frozen parameters are left out (the optimizer never sees them).
"""

from __future__ import annotations

import re
from typing import Any

from timm.models import group_parameters
from timm.optim import param_groups_layer_decay
from torch import nn

__all__ = ["param_groups", "prefix_group_matcher"]

# embeddings and tokens of timm ViTs (VisionTransformer, Eva) by their last name component,
# anywhere in the model: what a model's own no_weight_decay() may not list
_NO_DECAY_NAMES = {"pos_embed", "cls_token", "reg_token", "mask_token", "dist_token", "pos_embed_window"}
# passed to timm as the weight decay, to read which of its groups decay even when weight_decay=0
_DECAY_MARK = 1.0


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    head_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim.AdamW(param_groups(model, lr=1e-4))``.

    Args:
        model: a :class:`segzoo.Segmenter` (or any model with timm's ``group_matcher``; with
            ``layer_decay=1.0`` any model).
        lr: learning rate of the top of the network (head, neck, last block before decay).
        weight_decay: applied to weight matrices and convolution kernels only.
        layer_decay: per-block (ViT) or per-stage (MiT) LR factor in (0, 1]; 1.0 turns
            layer-wise decay off.
        head_lr_mult: LR multiplier of the neck and head (every parameter after the encoder's
            layers and outside ``model.backbone``) relative to ``lr``.

    Returns:
        one dict per (learning rate, weight decay) pair with ``params``, ``lr``,
        ``weight_decay``, ``lr_scale`` (the group's factor on ``lr``, for schedulers that
        rescale groups) and ``param_names`` (for inspection; optimizers ignore it), in
        ``model.named_parameters()`` order within a group.
    """
    _check(lr, weight_decay, layer_decay, head_lr_mult)
    layer_of = _layers(model, needed=layer_decay != 1.0)
    top = max(layer_of.values(), default=0)
    timm_groups = param_groups_layer_decay(
        model, weight_decay=_DECAY_MARK, no_weight_decay_list=sorted(_no_decay_names(model)), layer_decay=layer_decay
    )
    # timm's (lr_scale, decays) per parameter; frozen parameters are not in its groups
    timm_setting = {id(p): (g["lr_scale"], g["weight_decay"] > 0) for g in timm_groups for p in g["params"]}
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():  # this order, not timm's, so group contents stay stable
        if id(param) not in timm_setting:
            continue
        scale, decay = timm_setting[id(param)]
        if layer_of.get(name, top) == top and not name.startswith("backbone."):  # neck and head
            scale *= head_lr_mult
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


def prefix_group_matcher(matcher: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A submodule's ``group_matcher`` (timm's dict format, regexes on the submodule's own
    parameter names, each anchored once at its start) on the names of a parent that holds the
    submodule as ``prefix`` (e.g. ``"backbone."``). Group order, capture groups and ordinal
    suffixes stay, so the layers are the same."""
    if not isinstance(matcher, dict):
        raise TypeError(f"group_matcher must return timm's dict format to be prefixed, got {type(matcher).__name__}")

    def under_prefix(pattern: str) -> str:
        return "^" + re.escape(prefix) + "(?:" + pattern.removeprefix("^") + ")"

    return {
        key: spec if spec is None else under_prefix(spec) if isinstance(spec, str)
        else [(under_prefix(pattern), suffix) for pattern, suffix in spec]
        for key, spec in matcher.items()
    }


# -- helpers -------------------------------------------------------------------------------


def _layers(model: nn.Module, needed: bool) -> dict[str, int]:
    """timm's layer of every parameter (frozen ones included, so freezing does not renumber),
    from ``model.group_matcher``; empty for a model without one (then only usable without
    layer decay)."""
    matcher = getattr(model, "group_matcher", None)
    layer_of = group_parameters(model, matcher(coarse=False), reverse=True) if callable(matcher) else {}
    if needed and max(layer_of.values(), default=0) == 0:
        backbone = getattr(model, "backbone", None)
        raise TypeError(
            f"layer-wise LR decay needs a segzoo ViT model or segformer_mit_* model (an encoder whose "
            f"group_matcher() splits it into blocks or stages), got {type(model).__name__}"
            f"{' with a ' + type(backbone).__name__ if backbone is not None else ''}; "
            "pass layer_decay=1.0 for other encoders"
        )
    return layer_of


def _no_decay_names(model: nn.Module) -> set[str]:
    """What timm's 1-D rule does not exempt but segzoo does (timm's ``no_weight_decay_list``):
    the model's ``no_weight_decay()`` entries, and embeddings, tokens and biases of any shape
    by name."""
    listed = getattr(model, "no_weight_decay", None)
    by_name = {
        name for name, param in model.named_parameters()
        if param.requires_grad and param.ndim > 1 and name.rsplit(".", 1)[-1] in _NO_DECAY_NAMES | {"bias"}
    }
    return by_name | (set(listed()) if callable(listed) else set())


def _check(lr: float, weight_decay: float, layer_decay: float, head_lr_mult: float) -> None:
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1] (1.0 disables layer-wise decay), got {layer_decay!r}")
    if not head_lr_mult > 0:
        raise ValueError(f"head_lr_mult must be > 0, got {head_lr_mult!r}")
