"""Architecture facts of a registered model, without weights or memory (meta device)."""

from __future__ import annotations

from typing import Any

import torch

from ._factory import create_model
from ._registry import get_pretrained_cfg, list_models

__all__ = ["model_summary"]


def model_summary(name: str, num_classes: int = 2) -> dict[str, Any]:
    """Architecture facts of a registered model, built on the meta device (no memory, no download)."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    counts = model.count_parameters()
    cfg = get_pretrained_cfg(name, allow_missing=True)
    arch = name.partition(".")[0]
    return {
        "name": arch,
        "head": arch.split("_", 1)[0],
        "backbone": model.pretrained_cfg.get("backbone"),
        "timm_arch": model.pretrained_cfg.get("timm_arch"),  # None for encoders not from timm (MiT)
        "encoder": model.pretrained_cfg.get("timm_arch") or type(getattr(model.backbone, "model", model.backbone)).__name__,
        "patch_size": model.patch_size,
        "feature_indices": model.pretrained_cfg.get("feature_indices"),
        "neck": type(model.neck).__name__,
        "decode_head": type(model.decode_head).__name__,
        "params": {part: total for part, (_, total) in counts.items()},
        "pretrained_tags": [n.partition(".")[2] for n in list_models(f"{arch}.*", pretrained=True)],
        "license": model.pretrained_cfg.get("license"),
        "pretrained_cfg": cfg.to_dict() if cfg else None,
    }
