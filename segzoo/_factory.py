"""create_model: the front door. Registered names, pretrained tags, saved models
(``hf-hub:`` ids and local folders, LoRA adapter folders included), and the checks that
must fail early with a clear message. This is the one module that builds models from
saved files; ``_hub`` and ``lora`` only read and write them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from ._hub import (
    CONFIG_NAME,
    HF_HUB_PREFIX,
    WEIGHTS_NAME,
    download_backbone_weights,
    read_saved_config,
    resolve_saved_file,
)
from .backbones.specs import get_backbone_spec, published_weights_source
from .description import ModelDescription, WeightsRecord
from ._registry import is_model, resolve_model_name, split_model_name_tag
from ._weights import CheckpointError, LoadReport, load_state_dict_strict
from .lora import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    apply_lora,
    load_lora_adapter,
    read_adapter_config,
)

__all__ = ["ADAPTER_FOLDER_OVERRIDES", "create_model", "load_backbone_weights", "load_saved_model"]

# create_model options an adapter folder's rebuild can take: none changes a weight's shape
ADAPTER_FOLDER_OVERRIDES = ("drop_path_rate", "freeze_backbone", "grad_checkpointing")


def create_model(
    model_name: str,
    pretrained: bool = False,
    num_classes: int | None = None,
    in_chans: int = 3,
    checkpoint_path: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered zoo model by name, or reload a saved one.

    Args:
        model_name: a registered name, optionally with a pretrained tag
            (``"segformer_dinov3_large.lvd1689m"``; see :func:`segzoo.list_models`), or a
            model saved by :func:`segzoo.save_pretrained`: ``"hf-hub:org/name"`` (optionally
            ``"hf-hub:org/name@revision"``) or a local folder holding ``config.json``.
        pretrained: load the backbone's published weights from the Hugging Face Hub (the
            tag's, else the model's default tag); decoder weights always start fresh. For a
            saved model the whole model's weights always load (as timm's ``hf-hub:``), so
            this flag changes nothing there.
        num_classes: number of output classes, background included (saved models: from config.json).
        in_chans: input channels; pretrained patch-embedding filters are adapted
            (timm's ``adapt_input_conv``), not the input repeated.
        checkpoint_path: a local backbone checkpoint in its original published layout
            (Meta's DINOv2/DINOv3 files, RETFound ``.pth``, VisionFM ``{'teacher': ...}``,
            timm state dicts / ``.safetensors``); keys are mapped and every load is reported.
            ``checkpoint_format=`` overrides the detected layout.
        **kwargs: model options, e.g. ``neck="none"``, ``decoder_hidden_size=128``,
            ``feature_indices=[...]``, ``backbone_kwargs=dict(depth=2, embed_dim=64, num_heads=2)``,
            ``freeze_backbone=True``, ``grad_checkpointing=True``,
            ``lora=dict(r=8, alpha=16, dropout=0.05, target_modules=["qkv"])`` (peft LoRA on the
            backbone, base weights frozen; see :func:`segzoo.lora.apply_lora`).

    Returns:
        a :class:`segzoo.Segmenter` mapping ``(B, in_chans, H, W)`` to ``(B, num_classes, H, W)``.
    """
    if isinstance(model_name, os.PathLike):
        model_name = os.fspath(model_name)
    if not isinstance(model_name, str) or not model_name:
        raise TypeError(f"model_name must be a non-empty string, got {model_name!r}")
    if model_name.startswith(HF_HUB_PREFIX) or _looks_like_path(model_name):
        if checkpoint_path is not None:
            raise ValueError(
                f"{model_name!r} is a saved segzoo model with its own weights; checkpoint_path is for backbone files"
            )
        overrides = dict(kwargs)
        if num_classes is not None:
            overrides["num_classes"] = num_classes
        if in_chans != 3:
            overrides["in_chans"] = in_chans
        return load_saved_model(model_name, **overrides)
    # the one lookup: unknown names and tags raise here, naming the closest ones, before any work
    tag_keyword = kwargs.pop("pretrained_tag", None)  # how saved folders record a tag; a different one in the name raises
    entry, cfg = resolve_model_name(model_name, tag_keyword)
    asked_tag = split_model_name_tag(model_name)[1] or tag_keyword
    if checkpoint_path is not None:  # absolute: what adapter folders record must resolve from any directory
        kwargs["checkpoint_path"] = os.path.abspath(os.path.expanduser(os.fspath(checkpoint_path)))
    lora = kwargs.pop("lora", None)
    if lora is not None and lora is not False and entry.supports_lora is False:
        # before building or downloading anything
        raise ValueError(f"{entry.name} takes no lora: {entry.backbone.backbone_class.lora_refusal}")
    model = entry.entrypoint(pretrained=pretrained, pretrained_cfg=cfg, num_classes=num_classes, in_chans=in_chans,
                             **kwargs)
    arch, tag = entry.name, asked_tag or ""
    # what rebuilds the architecture, and (apart from it) where the weights came from
    rebuild = {k: v for k, v in kwargs.items() if k not in ("checkpoint_path", "checkpoint_format")}
    rebuild = dict(num_classes=num_classes, in_chans=in_chans, **rebuild, **({"pretrained_tag": tag} if tag else {}))
    hub_id = model.pretrained_cfg.get("hf_hub_id") if pretrained else None
    model.description = ModelDescription(arch, rebuild, WeightsRecord(
        pretrained=bool(pretrained), checkpoint_path=kwargs.get("checkpoint_path"), hf_hub_id=hub_id))
    if lora is not None and lora is not False:  # last, after all weights are in: LoRA renames the targeted layers' keys
        _apply_lora_option(model, lora)
    return model


def load_saved_model(name_or_path: str | os.PathLike, verbose: bool = True, **overrides: Any) -> nn.Module:
    """Rebuild a saved model from a local folder or ``"hf-hub:org/name[@revision]"`` and load it strictly.

    A folder from :func:`segzoo.save_pretrained` rebuilds the registered architecture from
    its ``config.json`` and loads ``model.safetensors``; ``overrides`` replace saved kwargs
    that do not change the weights' shapes (e.g. ``freeze_backbone=True``), shape-changing
    ones make the strict load fail, naming the keys. An adapter folder (``adapter_only``
    save, or :func:`segzoo.lora.save_lora_adapter`) rebuilds the recorded base with the
    weights it was trained on, then loads the adapters (fingerprint-checked).
    """
    name = os.fspath(name_or_path)
    folder = Path(name).expanduser()
    if not name.startswith(HF_HUB_PREFIX) and (folder / ADAPTER_CONFIG_NAME).is_file() \
            and not (folder / CONFIG_NAME).is_file():  # written by save_lora_adapter alone
        return _load_adapter_folder(folder, overrides)
    config, where = read_saved_config(name)
    if config.get("adapter_only"):
        for filename in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME):
            adapter_file, _ = resolve_saved_file(name, filename)  # a Hub snapshot keeps them in one folder
        return _load_adapter_folder(Path(adapter_file).parent, overrides)
    weights_file, _ = resolve_saved_file(name, WEIGHTS_NAME)
    description = ModelDescription.from_dict(config)
    model = create_model(description.name, pretrained=False, **{**description.rebuild_kwargs(), **overrides})
    model.description.weights = description.weights  # the origin of the saved backbone, not a random init
    try:
        state = load_file(weights_file, device="cpu")
    except Exception as err:
        raise CheckpointError(f"could not read {weights_file!r}: truncated or corrupted safetensors file ({err})") from err
    _restore_shared_names(model, state)
    load_state_dict_strict(model, state, source=where, verbose=verbose)
    return model


def load_backbone_weights(
    model: nn.Module,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_format: str | None = None,
    verbose: bool = True,
) -> LoadReport:
    """Load backbone weights into an existing zoo model, in place: what ``pretrained=True``
    (or ``checkpoint_path=``) does in :func:`create_model`, for a model already built.

    Without ``checkpoint_path`` the published weights of the model's pretrained tag are
    downloaded from the Hub (``model.pretrained_cfg["tag"]``); with it, a local file in its
    original layout loads (``checkpoint_format`` overrides the detected one). For
    ``segformer_mit_*`` models the file is a transformers SegFormer one, and a fine-tuned
    tag's file also holds the decode head (its classifier loads when the class count matches). A model with
    LoRA adapters gets the weights in its frozen base layers; the adapters, neck and head
    keep their values. Every load is checked and reported as in :func:`create_model`.
    """
    backbone = getattr(model, "backbone", None)
    if not callable(getattr(backbone, "load_checkpoint", None)):
        raise TypeError(f"load_backbone_weights expects a zoo model (a Segmenter), got {type(model).__name__}")
    if checkpoint_path is None:  # the published file of the model's weight set
        cfg = getattr(model, "pretrained_cfg", None) or {}
        if not cfg.get("backbone"):
            raise ValueError("this model's backbone is no registered backbone, so it has no published weights: "
                             "pass checkpoint_path=... (a local file)")
        source = published_weights_source(get_backbone_spec(cfg["backbone"]), cfg.get("tag"))
        checkpoint_path = download_backbone_weights(source)
        checkpoint_format = checkpoint_format or source.checkpoint_format
    report = backbone.load_checkpoint(model, os.fspath(checkpoint_path), checkpoint_format, verbose=verbose)
    if getattr(model, "description", None) is not None:  # an adapter-only save now records this base
        local = os.path.abspath(os.fspath(checkpoint_path)) if checkpoint_path is not None else None
        model.description.weights = WeightsRecord(
            pretrained=local is None, checkpoint_path=local,
            hf_hub_id=model.pretrained_cfg.get("hf_hub_id") if local is None else None)
    return report


def _load_adapter_folder(folder: Path, overrides: dict[str, Any]) -> nn.Module:
    """Rebuild an adapter's base as it was built (published weights, or its recorded
    ``checkpoint_path``), then load the adapter onto it. Overrides that leave every weight's
    shape alone apply; ``check_base=False`` skips the base fingerprint check."""
    check_base = bool(overrides.pop("check_base", True))
    refused = sorted(set(overrides) - set(ADAPTER_FOLDER_OVERRIDES))
    if refused:
        hint = (" (the saved head has the adapter's classes: reload, then call model.reset_classifier(n))"
                if "num_classes" in refused else "")
        raise ValueError(
            f"{folder} is a LoRA adapter folder: its base is rebuilt as it was trained, so {refused} cannot "
            f"change{hint}; options that can: {', '.join(ADAPTER_FOLDER_OVERRIDES)}, check_base. Or build the "
            "base yourself and call segzoo.lora.load_lora_adapter(base_model, folder)"
        )
    description = read_adapter_config(folder)["description"]
    kwargs = {**description.rebuild_kwargs(lora=False), **overrides}  # the adapter adds the LoRA layers
    pretrained, checkpoint_path = description.weights.pretrained, description.weights.checkpoint_path
    if checkpoint_path and not pretrained:
        if not Path(checkpoint_path).is_file():
            raise FileNotFoundError(
                f"the adapter's base was built from checkpoint_path={checkpoint_path!r}, which does not exist here; "
                "build the base yourself and call load_lora_adapter(base_model, directory)"
            )
        kwargs["checkpoint_path"] = checkpoint_path
    name = description.name
    return load_lora_adapter(create_model(name, pretrained=pretrained, **kwargs), folder, check_base=check_base)


def _restore_shared_names(model: nn.Module, state: dict[str, Any]) -> None:
    """safetensors stores a tensor shared by several names (tied weights) once; give every name its value."""
    groups: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for name, tensor in model.state_dict().items():
        if tensor.numel():
            groups.setdefault((tensor.data_ptr(), tuple(tensor.shape)), []).append(name)
    for names in groups.values():
        present = [n for n in names if n in state]
        for name in names if present and len(names) > 1 else []:
            state.setdefault(name, state[present[0]])


def _looks_like_path(name: str) -> bool:
    """Registered names never hold a path separator; a name that does must be a folder.
    A bare name is a folder only if no model is registered under it."""
    if os.sep in name or "/" in name or name.startswith((".", "~")):
        return True
    return not is_model(name) and Path(name).is_dir()


def _apply_lora_option(model: nn.Module, lora: Any) -> None:
    if lora is True:
        lora = {}
    if not isinstance(lora, dict):
        raise TypeError(
            f"lora must be a dict such as dict(r=8, alpha=16, dropout=0.05, target_modules=['qkv']), got {lora!r}"
        )
    allowed = {"r", "alpha", "dropout", "target_modules"}
    unknown = sorted(set(lora) - allowed)
    if unknown:
        raise TypeError(f"unknown lora option(s) {unknown}; allowed: {sorted(allowed)}")
    apply_lora(model, **lora)  # records model.model_kwargs["lora"]
