"""segzoo: a timm-style zoo of segmentation models on ViT foundation backbones.

Importing segzoo is instant: the registry (names, heads, backbone specs, pretrained
configs) is plain data, so ``segzoo.list_models()`` and ``segzoo --help`` need neither
torch nor timm. Everything that builds or runs a model is imported on first use.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

# timm's model files call torch.jit.interface at import, which newer torch deprecates: a warning
# about timm's code, not the user's, that every command would print
warnings.filterwarnings("ignore", message=r".*torch\.jit\.interface.* is deprecated", category=FutureWarning)

from . import _catalog  # noqa: E402,F401  (registers the zoo's models)
from ._catalog import HeadSpec, list_heads  # noqa: E402
from ._pretrained import PretrainedCfg  # noqa: E402
from ._registry import (  # noqa: E402
    ModelEntry,
    UnknownModelError,
    get_pretrained_cfg,
    is_model,
    list_models,
    list_pretrained,
    model_entry,
    model_entrypoint,
    register_model,
    register_pretrained_cfgs,
    split_model_name_tag,
)
from ._version import __version__  # noqa: E402
from .backbones.specs import BackboneSpec  # noqa: E402

__all__ = [
    "BackboneSpec",
    "CheckpointError",
    "HeadSpec",
    "HubAccessError",
    "LoadReport",
    "ModelEntry",
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
    "list_heads",
    "list_models",
    "list_pretrained",
    "load_backbone_checkpoint",
    "load_backbone_weights",
    "load_pretrained",
    "model_entry",
    "model_entrypoint",
    "push_to_hub",
    "register_model",
    "register_pretrained_cfgs",
    "save_pretrained",
    "split_model_name_tag",
    "uncompile_model",
]

# name -> the module that defines it, imported on first access (PEP 562)
_LAZY = {
    "create_model": "._factory",
    "load_backbone_weights": "._factory",
    "load_pretrained": "._deprecated",
    "compile_model": ".compilation",
    "is_compiled": ".compilation",
    "uncompile_model": ".compilation",
    "export_onnx": ".export",
    "HubAccessError": "._hub",
    "push_to_hub": "._hub",
    "save_pretrained": "._hub",
    "create_segformer_model": ".compat",
    "CheckpointError": "._weights",
    "LoadReport": "._weights",
    "UnsafeCheckpointError": "._weights",
    "load_backbone_checkpoint": "._deprecated",
    "Segmenter": ".models",
}
_SUBMODULES = ("backbones", "compat", "heads", "losses", "lora", "models", "necks", "optim")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # once
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
