"""LoRA fine-tuning of a zoo model's ViT backbone, through peft.

peft's low-level API (``inject_adapter_in_model``) swaps the targeted ``nn.Linear``
layers of the timm ViT for ``peft`` LoRA layers in place, so ``model.backbone.model``
stays the timm model (``forward_intermediates`` and gradient checkpointing keep working)
and only the targeted layers' state-dict keys change (``qkv.weight`` ->
``qkv.base_layer.weight`` + ``qkv.lora_A.default.weight`` / ``qkv.lora_B.default.weight``).

Base backbone weights are frozen; the neck and head stay fully trainable. An
adapter-only save keeps the adapters, the neck and the head (megabytes instead of a
full ViT-L) plus a fingerprint of the base weights they were trained on, so loading
onto a different base fails loudly instead of silently giving other outputs.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ._weights import is_lora_adapter_key, plain_state_key
from .description import ModelDescription

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "apply_lora",
    "base_weights_sha256",
    "has_lora",
    "load_lora_adapter",
    "read_adapter_config",
    "lora_config_of",
    "merge_lora",
    "save_lora_adapter",
]

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
_FORMAT = "segzoo-lora-adapter"
_DEFAULT_TARGETS = ("qkv",)


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.05,
    target_modules: Sequence[str] | str | None = _DEFAULT_TARGETS,
) -> nn.Module:
    """Add LoRA adapters (rank ``r``, scale ``alpha / r``) to the backbone's ``target_modules``.

    Freezes every base backbone weight, leaves the adapters, neck and head trainable, and
    records the settings in ``model.model_kwargs["lora"]`` so the model can be rebuilt by name.
    Modifies ``model`` in place and returns it.

    Args:
        model: a :class:`segzoo.Segmenter` (anything with ``backbone.model`` a timm ViT).
        r: adapter rank, >= 1.
        alpha: LoRA scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter input, in [0, 1).
        target_modules: names of ``nn.Linear`` layers inside each block (``"qkv"``,
            ``"proj"``, ``"fc1"``, ``"fc2"``; a dotted suffix such as ``"attn.proj"`` also works),
            or one regular expression matched against full module names (peft's rule).
    """
    timm_model = _timm_model(model)
    if has_lora(model):
        raise ValueError("model already has LoRA adapters; call segzoo.lora.merge_lora(model) before applying new ones")
    r, alpha, dropout, targets = _check_lora_args(r, alpha, dropout, target_modules)
    _check_targets_exist(timm_model, targets)
    trainable_before = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    # peft is imported on first use: it is most of `import segzoo`'s time, and most models never need it
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    inject_adapter_in_model(config, timm_model)  # freezes every non-adapter weight of the timm model
    for part in ("neck", "decode_head"):
        if hasattr(model, part):
            for param in getattr(model, part).parameters():
                param.requires_grad = True
    model._lora_trainable_before = trainable_before  # restored by merge_lora
    recorded_targets = targets if isinstance(targets, str) else list(targets)
    settings = dict(r=r, alpha=alpha, dropout=dropout, target_modules=recorded_targets)
    if isinstance(getattr(model, "model_kwargs", None), dict):
        model.model_kwargs["lora"] = settings
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights (peft's merge) and remove the LoRA layers.

    The result is a plain model: state-dict keys are those of a model built without
    ``lora``, outputs equal the LoRA model's, and ``model_kwargs`` no longer lists
    ``lora``. Parameters trainable before :func:`apply_lora` are trainable again.
    Modifies ``model`` in place and returns it.
    """
    timm_model = _timm_model(model)
    layers = _peft_layers(timm_model)
    if not layers:
        raise ValueError(
            "model has no LoRA adapters to merge; add them with segzoo.lora.apply_lora(model) or "
            "segzoo.create_model(..., lora=dict(r=8))"
        )
    for name, layer in layers:
        layer.merge()
        parent_name, _, child_name = name.rpartition(".")
        parent = timm_model.get_submodule(parent_name) if parent_name else timm_model
        setattr(parent, child_name, layer.get_base_layer())
    if hasattr(timm_model, "peft_config"):
        del timm_model.peft_config
    trainable_before = getattr(model, "_lora_trainable_before", None)
    if trainable_before is not None:
        for name, param in model.named_parameters():
            param.requires_grad = name in set(trainable_before)
        del model._lora_trainable_before
    if isinstance(getattr(model, "model_kwargs", None), dict):
        model.model_kwargs.pop("lora", None)
    return model


def has_lora(model: nn.Module) -> bool:
    """Whether the model's backbone carries peft LoRA layers."""
    return bool(_peft_layers(model))



def lora_config_of(model: nn.Module) -> dict[str, Any]:
    """The ``apply_lora`` settings of a LoRA model (``r``, ``alpha``, ``dropout``, ``target_modules``)."""
    config = getattr(_timm_model(model), "peft_config", {}).get("default")
    if config is None:
        raise ValueError("model has no LoRA adapters; add them with segzoo.lora.apply_lora(model)")
    targets = config.target_modules
    return dict(
        r=config.r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        target_modules=targets if isinstance(targets, str) else sorted(targets),
    )


def save_lora_adapter(model: nn.Module, save_directory: str | Path) -> Path:
    """Write the adapter, neck and head weights plus what is needed to find their base.

    Files: ``adapter_model.safetensors`` (the LoRA weights, every other trainable
    backbone parameter, the neck and the head, under the model's own state-dict keys)
    and ``adapter_config.json`` (registered model name and kwargs, the LoRA settings, and
    the base weights: pretrained tag, checkpoint path and a SHA-256 over every backbone
    tensor not in the file). Returns the directory.
    """
    if not has_lora(model):
        raise ValueError("model has no LoRA adapters: save the whole model instead (segzoo.save_pretrained)")
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in _adapter_state_dict(model).items()}
    description = getattr(model, "description", None)
    if description is None:
        raise ValueError("this model does not record how to rebuild it: create it with segzoo.create_model(name, ...)")
    config = {
        "format": _FORMAT,
        "format_version": 2,
        **description.to_dict(),  # the same description config.json holds; model_kwargs["lora"] included
        "base_sha256": base_weights_sha256(model, exclude=set(tensors)),
    }
    save_file(tensors, str(directory / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt", "segzoo": _FORMAT})
    (directory / ADAPTER_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    return directory


def load_lora_adapter(model: nn.Module, directory: str | Path | None = None, check_base: bool = True) -> nn.Module:
    """Load an adapter written by :func:`save_lora_adapter` onto its base model.

    Adds the saved LoRA layers to ``model`` (built without ``lora``; one that already has
    the same LoRA layers is accepted) and loads the weights. With ``check_base`` the base
    weights must hash to the recorded SHA-256, else the adapter would silently give
    different outputs. To rebuild the recorded base from the folder as well, call
    ``segzoo.create_model(directory)``.
    """
    if not isinstance(model, nn.Module) or directory is None:
        raise TypeError(
            f"load_lora_adapter(model, directory) loads onto a model you built; got {type(model).__name__}. "
            "To rebuild the adapter's base from the folder, call segzoo.create_model(directory)"
        )
    directory = Path(directory)
    config = read_adapter_config(directory)
    if has_lora(model) and lora_config_of(model) != config["lora"]:
        raise ValueError(
            f"model already has LoRA {lora_config_of(model)} but the adapter in {directory} was saved with "
            f"{config['lora']}; pass the base model without LoRA (or merge_lora it first)"
        )
    tensors = load_file(str(directory / ADAPTER_WEIGHTS_NAME))
    if check_base:  # before apply_lora, so a refused model is left as it was
        _check_base(model, set(tensors), config, directory)
    if not has_lora(model):
        apply_lora(model, **config["lora"])
    expected = set(_adapter_state_dict(model))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(
            f"adapter in {directory} does not fit this model: missing {missing[:5]} unexpected {unexpected[:5]}; "
            f"it was saved for {config['description'].name} with {config['description'].kwargs}"
        )
    model.load_state_dict(tensors, strict=False)
    return model


def base_weights_sha256(model: nn.Module, exclude: set[str] | None = None) -> str:
    """SHA-256 over the backbone's tensors (name, dtype, shape, bytes) in name order.

    Adapter tensors and anything in ``exclude`` are left out, and LoRA's ``base_layer.``
    is dropped from names, so a plain and a LoRA model over the same weights agree.
    """
    exclude = {plain_state_key(name) for name in exclude or ()}
    digest = hashlib.sha256()
    items = [
        (plain_state_key(name), tensor)
        for name, tensor in model.state_dict().items()
        if name.startswith("backbone.") and plain_state_key(name) not in exclude and not is_lora_adapter_key(name)
    ]
    for name, tensor in sorted(items, key=lambda kv: kv[0]):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# -- helpers -------------------------------------------------------------------------------


def _peft_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """peft's tuner layers in ``module``: none while peft was never imported, as no model can hold one then."""
    tuners = sys.modules.get("peft.tuners.tuners_utils")
    if tuners is None:
        return []
    return [(name, m) for name, m in module.named_modules() if isinstance(m, tuners.BaseTunerLayer)]


def _timm_model(model: nn.Module) -> nn.Module:
    backbone = getattr(model, "backbone", None)
    timm_model = getattr(backbone, "model", None)
    if backbone is not None and not getattr(backbone, "supports_lora", True):  # e.g. MiT: not timm's blocks
        raise ValueError(backbone.lora_refusal)
    if not isinstance(timm_model, nn.Module) or not hasattr(timm_model, "blocks"):
        raise TypeError(
            f"expected a segzoo model (with .backbone.model a timm ViT), got {type(model).__name__}; "
            "build one with segzoo.create_model(...)"
        )
    return timm_model


def _check_lora_args(
    r: Any, alpha: Any, dropout: Any, target_modules: Sequence[str] | str | None
) -> tuple[int, float, float, list[str] | str]:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA rank r must be an integer >= 1, got {r!r} (8 or 16 are usual)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ValueError(f"LoRA alpha must be a number > 0, got {alpha!r} (usually 2 * r)")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    if target_modules is None:
        target_modules = _DEFAULT_TARGETS
    if isinstance(target_modules, str):
        return r, float(alpha), float(dropout), target_modules
    targets = list(target_modules)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(
            f"target_modules must be a non-empty list of layer names such as ['qkv'], got {target_modules!r}"
        )
    return r, float(alpha), float(dropout), targets


def _check_targets_exist(timm_model: nn.Module, targets: list[str] | str) -> None:
    linear = [name for name, module in timm_model.named_modules() if isinstance(module, nn.Linear)]
    available = sorted({name.rsplit(".", 1)[-1] for name in linear})
    if isinstance(targets, str):
        unknown = [] if any(re.fullmatch(targets, name) for name in linear) else [targets]
    else:
        unknown = [t for t in targets if not any(name == t or name.endswith("." + t) for name in linear)]
    if unknown:
        raise ValueError(
            f"LoRA target_modules {unknown} match no linear layer of the backbone; "
            f"available linear layers: {available} (e.g. target_modules=['qkv'] for the attention projection)"
        )


def _check_base(model: nn.Module, saved: set[str], config: dict[str, Any], directory: Path) -> None:
    found = base_weights_sha256(model, exclude=saved)
    expected, description = config["base_sha256"], config["description"]
    if found != expected:
        weights = description.weights
        origin = (f"checkpoint {weights.checkpoint_path}" if weights.checkpoint_path
                  else f"the published weights (hub {weights.hf_hub_id})" if weights.pretrained else "a random init")
        raise ValueError(
            f"base weights differ from the ones the adapter in {directory} was trained on (sha256 {found[:12]}... "
            f"!= {expected[:12]}...): it expects {description.name} built from {origin}; "
            "build the base with those weights, or pass check_base=False to load anyway"
        )


def _adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapters + trainable backbone parameters + whole neck and head (buffers included)."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {
        name: tensor
        for name, tensor in model.state_dict().items()
        if not name.startswith("backbone.") or is_lora_adapter_key(name) or name in trainable
    }


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """The checked ``adapter_config.json`` of an adapter folder (name, kwargs, base, LoRA settings)."""
    directory = Path(directory)
    path = directory / ADAPTER_CONFIG_NAME
    if not path.is_file() or not (directory / ADAPTER_WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"{directory} holds no segzoo LoRA adapter ({ADAPTER_CONFIG_NAME} + {ADAPTER_WEIGHTS_NAME}); "
            "write one with segzoo.lora.save_lora_adapter(model, directory)"
        )
    config = json.loads(path.read_text())
    if config.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a segzoo LoRA adapter config (format {config.get('format')!r})")
    try:
        config["description"] = ModelDescription.from_dict(config)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path} records no model to rebuild ({err}); load it onto a base model: "
                         "load_lora_adapter(model, dir)") from err
    config["lora"] = config["description"].lora
    config.setdefault("base_sha256", (config.get("base") or {}).get("sha256"))  # format 1
    return config
