"""Names an earlier release exported, kept working with a warning that names their replacement.

One name per job: a saved model reloads through :func:`segzoo.create_model` (a folder or an
``hf-hub:`` id), and backbone weights load into a model through :func:`segzoo.load_backbone_weights`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from ._factory import load_saved_model
from ._weights import LoadReport
from ._weights import load_backbone_checkpoint as _load_into_backbone

__all__ = ["load_backbone_checkpoint", "load_pretrained"]


def load_pretrained(name_or_path: str | os.PathLike, verbose: bool = True, **overrides: Any) -> nn.Module:
    """Deprecated: ``segzoo.create_model(folder_or_hf_hub_id, **overrides)`` does the same."""
    warnings.warn("segzoo.load_pretrained is deprecated: use segzoo.create_model(folder or 'hf-hub:org/name')",
                  FutureWarning, stacklevel=2)
    return load_saved_model(name_or_path, verbose=verbose, **overrides)


def load_backbone_checkpoint(backbone: nn.Module, checkpoint: str | Path | dict, checkpoint_format: str | None = None,
                             verbose: bool = True) -> LoadReport:
    """Deprecated: ``segzoo.load_backbone_weights(model, checkpoint_path)`` loads into the whole model."""
    warnings.warn("segzoo.load_backbone_checkpoint(model.backbone, file) is deprecated: use "
                  "segzoo.load_backbone_weights(model, file)", FutureWarning, stacklevel=2)
    return _load_into_backbone(backbone, checkpoint, checkpoint_format=checkpoint_format, verbose=verbose)
