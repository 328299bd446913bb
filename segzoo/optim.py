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

The layer of each parameter is decided once, by :func:`encoder_group_matcher` (timm's
``group_matcher`` format, which ``Segmenter.group_matcher`` returns, so timm's
``create_optimizer_v2(model, layer_decay=...)`` builds the same layers) and read here by
:func:`layer_id_of`.

LoRA adapters belong to the block of the layer they adapt, so they decay like it.
Frozen parameters are left out (the optimizer never sees them).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

__all__ = ["encoder_group_matcher", "embedding_param_names", "layer_id_of", "param_groups"]

# embeddings and tokens of timm ViTs (VisionTransformer, Eva); matched as the last name component
_NO_DECAY_NAMES = {"pos_embed", "cls_token", "reg_token", "mask_token", "dist_token", "pos_embed_window"}

# Layers of the encoder by full parameter name (as in model.named_parameters()), in timm's
# group_matcher format. The stem is what reads pixels: a ViT's patch embedding, tokens,
# position embeddings and RoPE; MiT's first patch embedding. The stem is tested first, so
# MiT's stage-0 patch embedding is not counted with stage 0.
_ENCODER = r"^backbone\.model\."
_STEM = (
    _ENCODER + r"(?:patch_embed|pos_embed|cls_token|reg_token|mask_token|dist_token|rope)(?:\.|$)"
    r"|" + _ENCODER + r"(?:stages\.0\.patch_embeddings|encoder\.patch_embeddings\.0)\."
)
_LAYERS = (
    _ENCODER + r"blocks\.(\d+)\.",  # timm ViT / Eva blocks
    _ENCODER + r"stages\.(\d+)\.",  # MiT stages, transformers >= 5 module layout
    _ENCODER + r"encoder\.(?:patch_embeddings|block|layer_norm)\.(\d+)\.",  # MiT stages, older transformers
)
_STEM_RE = re.compile(_STEM)
_LAYER_RES = tuple(re.compile(pattern) for pattern in _LAYERS)


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    head_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim.AdamW(param_groups(model, lr=1e-4))``.

    Args:
        model: a :class:`segzoo.Segmenter` (its ``backbone.model`` is the timm ViT or
            transformers' MiT).
        lr: learning rate of the top of the network (head, neck, last block before decay).
        weight_decay: applied to weight matrices and convolution kernels only.
        layer_decay: per-block (ViT) or per-stage (MiT) LR factor in (0, 1]; 1.0 turns
            layer-wise decay off.
        head_lr_mult: LR multiplier of the neck and head relative to ``lr``.

    Returns:
        one dict per (learning rate, weight decay) pair with ``params``, ``lr``,
        ``weight_decay``, ``lr_scale`` (the group's factor on ``lr``, for schedulers that
        rescale groups) and ``param_names`` (for inspection; optimizers ignore it).
    """
    _check(lr, weight_decay, layer_decay, head_lr_mult)
    num_blocks = _num_blocks(model, needed=layer_decay != 1.0)
    embeddings = embedding_param_names(model)
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id_of(name, num_blocks)
        if layer > num_blocks:  # neck, head, anything after the last block
            scale = head_lr_mult if not name.startswith("backbone.") else 1.0
        else:
            scale = layer_decay ** (num_blocks + 1 - layer)
        decay = not _is_no_decay(name, param, embeddings)
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


def encoder_group_matcher() -> dict[str, Any]:
    """timm's ``group_matcher`` of a zoo model, on its full parameter names: ``stem``
    (patch embedding, tokens, position embeddings) then one group per ViT block or MiT
    stage; everything unmatched (neck, head) is timm's last group."""
    return dict(stem=_STEM, blocks=[(pattern, None) for pattern in _LAYERS])


def layer_id_of(name: str, num_blocks: int) -> int:
    """Depth of a parameter for layer-wise decay: 0 for the stem (patch embedding, tokens,
    position embeddings), ``i + 1`` for ViT block ``i`` or MiT stage ``i`` (LoRA adapters
    included), and ``num_blocks + 1`` for everything after them (neck, head, a final norm
    kept by the backbone). The same layers as :func:`encoder_group_matcher`."""
    if _STEM_RE.match(name):
        return 0
    for pattern in _LAYER_RES:
        match = pattern.match(name)
        if match:
            return int(match.group(1)) + 1
    return num_blocks + 1


def embedding_param_names(model: nn.Module) -> set[str]:
    """Full names of the encoder's position embeddings and tokens (timm's ``no_weight_decay``
    entries included), those of ``model``'s parameters that exist."""
    backbone_model = getattr(getattr(model, "backbone", None), "model", None)
    timm_list = getattr(backbone_model, "no_weight_decay", None)
    # timm names them relative to its own model: pos_embed, cls_token, rope.* (Eva)
    timm_names = {f"backbone.model.{name}" for name in timm_list()} if callable(timm_list) else set()
    return {
        name for name, _ in model.named_parameters()
        if name in timm_names or name.rsplit(".", 1)[-1] in _NO_DECAY_NAMES
    }


# -- helpers -------------------------------------------------------------------------------


def _is_no_decay(name: str, param: nn.Parameter, embeddings: set[str]) -> bool:
    return param.ndim <= 1 or name.rsplit(".", 1)[-1] == "bias" or name in embeddings


def _num_blocks(model: nn.Module, needed: bool = True) -> int:
    """ViT blocks or MiT stages of the encoder, counted from the parameter names; 0 when
    the model has none (then only usable without layer decay)."""
    num_blocks = max(
        (int(match.group(1)) + 1 for name, _ in model.named_parameters() for pattern in _LAYER_RES
         if (match := pattern.match(name))),
        default=0,
    )
    if num_blocks == 0 and needed:
        backbone = getattr(model, "backbone", None)
        raise TypeError(
            f"layer-wise LR decay needs a segzoo ViT model or segformer_mit_* model (an encoder with blocks or "
            f"stages under .backbone.model), got {type(model).__name__}"
            f"{' with a ' + type(backbone).__name__ if backbone is not None else ''}; "
            "pass layer_decay=1.0 for other encoders"
        )
    return num_blocks


def _check(lr: float, weight_decay: float, layer_decay: float, head_lr_mult: float) -> None:
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1] (1.0 disables layer-wise decay), got {layer_decay!r}")
    if not head_lr_mult > 0:
        raise ValueError(f"head_lr_mult must be > 0, got {head_lr_mult!r}")
