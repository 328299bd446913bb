"""One published set of weights, as one typed record (timm's ``PretrainedCfg``).

A backbone spec lists the weight sets its family publishes (``architecture`` empty: every
head over that backbone shares them); the registry holds the same records with the model
name filled in; a built model carries ``cfg.to_dict()`` plus what its build settled
(``in_chans``, feature blocks) as ``model.pretrained_cfg``, the plain dict timm models carry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["PretrainedCfg", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainedCfg:
    """Where one weight set comes from, what it covers, and how to feed a model that uses it.

    ``hf_hub_id``/``hf_hub_filename`` name a Hub file (filename ``None``: ``model.safetensors``);
    ``hf_hub_id`` ``None`` means the file is not on the Hub and loads through
    ``checkpoint_path`` only. ``timm_tag`` marks an ungated copy hosted by timm.
    """

    tag: str
    architecture: str = ""  # the registered model; empty while it describes a backbone's weights
    backbone: str = ""  # e.g. "dinov3_large", "mit_b0"
    hf_hub_id: str | None = None
    hf_hub_filename: str | None = None
    timm_arch: str | None = None  # the timm model the backbone is built from (None: not timm's)
    timm_tag: str | None = None
    checkpoint_format: str = "timm"  # the file's layout (see segzoo/_weights.py)
    weights_scope: str = "backbone"  # "backbone", "encoder" or "full" (the whole model, fine-tuned)
    num_classes: int | None = None  # classes of a "full" checkpoint
    source: str = ""
    # the Hub's licence metadata: an SPDX-style id, or "other" with a name and a link to the terms
    license: str = ""
    license_name: str = ""
    license_link: str = ""
    gated: bool = False
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    patch_size: int = 16
    # how to prepare inputs where ImageNet habits mislead (intensity window, grey images and in_chans)
    input_advice: str = ""
    notes: str = ""

    @property
    def name(self) -> str:
        """``architecture.tag`` as ``create_model`` takes it."""
        return f"{self.architecture}.{self.tag}" if self.tag else self.architecture

    @property
    def license_text(self) -> str:
        """The licence as people read it: the id, or for ``other`` its name and link."""
        if self.license != "other":
            return self.license
        return f"{self.license_name} ({self.license_link})" if self.license_link else self.license_name

    def for_model(self, architecture: str) -> "PretrainedCfg":
        """The same weights registered under a model name."""
        return replace(self, architecture=architecture)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out
