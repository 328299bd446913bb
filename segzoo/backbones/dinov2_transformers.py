"""transformers DINOv2 files (``Dinov2Model`` / ``Dinov2WithRegistersModel``, e.g. ``facebook/dinov2-*``
and ``microsoft/rad-dino``'s ``model.safetensors``) renamed to Meta's original DINOv2 layout, which
timm's own converter then maps onto its ViT.

transformers saves separate query/key/value projections (``attention.attention.query``, or
``attention.q_proj`` in the module layout of transformers >= 5); timm's ViT has one ``qkv``
projection, so the three are stacked in q, k, v order. Position embeddings keep the class
token's entry in front, as Meta's files do.
"""

from __future__ import annotations

import re
from typing import Any

import torch

__all__ = ["is_transformers_dinov2", "to_meta_dinov2"]

_PATCH_KEY = "embeddings.patch_embeddings.projection.weight"
_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.register_tokens$", "register_tokens"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.layer_scale([12])\.lambda1$", r".ls\1.gamma"),
    (r"\.mlp\.weights_in\.", ".mlp.w12."),  # the giant model's SwiGLU, as Meta names it
    (r"\.mlp\.weights_out\.", ".mlp.w3."),
    (r"^layernorm\.", "norm."),
]
_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.(?:attention\.(query|key|value)|([qkv])_proj)\.(weight|bias)$")
_ORDER = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}


def is_transformers_dinov2(keys: set[str]) -> bool:
    """Whether ``keys`` are a transformers DINOv2 state dict (bare, or under ``dinov2.`` in a classifier)."""
    return _PATCH_KEY in keys or f"dinov2.{_PATCH_KEY}" in keys


def to_meta_dinov2(state: dict[str, Any], dropped: list[str]) -> dict[str, Any]:
    """Meta's DINOv2 key names for a transformers DINOv2 state dict; a classifier's head goes to ``dropped``."""
    if any(k.startswith("dinov2.") for k in state):  # Dinov2ForImageClassification
        dropped += [k for k in state if not k.startswith("dinov2.")]
        state = {k[len("dinov2."):]: v for k, v in state.items() if k.startswith("dinov2.")}
    out: dict[str, Any] = {}
    projections: dict[tuple[str, str], list[Any]] = {}
    for key, value in state.items():
        match = _QKV.match(key)
        if match:
            block, long_name, short_name, kind = match.groups()
            parts = projections.setdefault((block, kind), [None, None, None])
            parts[_ORDER[long_name or short_name]] = value
            continue
        for pattern, replacement in _RENAMES:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    for (block, kind), parts in projections.items():
        name = f"blocks.{block}.attn.qkv.{kind}"
        if any(p is None for p in parts):  # leave the gap for the loader to name
            out.update({f"{name}[{i}]": p for i, p in enumerate(parts) if p is not None})
            continue
        out[name] = torch.cat(parts, dim=0)
    return out
