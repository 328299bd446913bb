"""Architecture facts of a registered model, without weights or memory (meta device)."""

from __future__ import annotations

from typing import Any

import torch

from ._factory import create_model
from ._registry import resolve_model_name

__all__ = ["model_summary"]


def model_summary(name: str, num_classes: int = 2) -> dict[str, Any]:
    """Architecture facts of a registered model, built on the meta device (no memory, no download).

    What the registry knows (head, backbone, tags, licence) is read from the model's entry;
    what a build settles (feature blocks, parameter counts) from the model.
    """
    entry, cfg = resolve_model_name(name)
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    counts = model.count_parameters()
    spec = entry.backbone
    built = model.pretrained_cfg
    return {
        "name": entry.name,
        "head": entry.head.name if entry.head is not None else None,
        "backbone": spec.name if spec is not None else built.get("backbone"),
        "family": spec.family if spec is not None else None,
        "size": spec.size if spec is not None else None,
        "kind": spec.kind if spec is not None else None,
        "timm_arch": spec.timm_arch if spec is not None else built.get("timm_arch"),  # None: not a timm encoder (MiT)
        "encoder": built.get("timm_arch") or type(getattr(model.backbone, "model", model.backbone)).__name__,
        "patch_size": model.patch_size,
        "feature_indices": built.get("feature_indices"),
        "neck": type(model.neck).__name__,
        "decode_head": type(model.decode_head).__name__,
        "params": {part: total for part, (_, total) in counts.items()},
        "pretrained_tags": list(entry.pretrained_cfgs),
        "license": (cfg.license_text if cfg is not None else spec.license if spec is not None else None),
        "supports_lora": entry.supports_lora,
        "pretrained_cfg": cfg.to_dict() if cfg else None,
    }
