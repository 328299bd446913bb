"""segzoo: a timm-style zoo of segmentation models on ViT foundation backbones."""

import warnings

with warnings.catch_warnings():
    # timm's model files call torch.jit.interface at import, which newer torch deprecates: a warning
    # about timm's code, not the user's, printed by every command
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.interface.* is deprecated", category=FutureWarning)
    import timm  # noqa: F401

from . import lora, models, optim  # noqa: F401  (models registers every model)
from ._factory import create_model
from .compilation import compile_model, is_compiled, uncompile_model
from .export import export_onnx
from ._factory import load_backbone_weights, load_pretrained
from ._hub import HubAccessError, push_to_hub, save_pretrained
from .compat import create_segformer_model
from ._pretrained import PretrainedCfg
from ._registry import (
    UnknownModelError,
    get_pretrained_cfg,
    is_model,
    list_models,
    list_pretrained,
    model_entrypoint,
    register_model,
    register_pretrained_cfgs,
)
from ._weights import CheckpointError, LoadReport, UnsafeCheckpointError, load_backbone_checkpoint
from ._version import __version__
from .models import Segmenter


__all__ = [
    "CheckpointError",
    "HubAccessError",
    "LoadReport",
    "PretrainedCfg",
    "Segmenter",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "__version__",
    "compile_model",
    "create_model",
    "create_segformer_model",
    "export_onnx",
    "get_pretrained_cfg",
    "is_compiled",
    "is_model",
    "list_models",
    "list_pretrained",
    "load_backbone_checkpoint",
    "load_backbone_weights",
    "load_pretrained",
    "model_entrypoint",
    "push_to_hub",
    "register_model",
    "register_pretrained_cfgs",
    "save_pretrained",
    "uncompile_model",
]
