"""Local checkpoint loading: read a file safely, recognise its published layout, map its
keys onto the zoo's timm backbone, and refuse partial loads.

Layouts recognised (``checkpoint_format``, detected when not given):

- ``"timm"``: a timm state dict (``.safetensors`` or ``.pth``), e.g. the Hub copies timm publishes.
- ``"dinov2"``: Meta's original DINOv2 files (``mask_token``, ``register_tokens``, ``mlp.w12``).
- ``"dinov3"``: Meta's original DINOv3 files (``storage_tokens``, ``rope_embed.periods``, ``ls1.gamma``).
- ``"mae"``: MAE pre-training checkpoints such as RETFound's (``{'model': ...}`` with ``decoder_*``).
- ``"dino_teacher"``: DINO/iBOT/DINOv2/DINOv3 training checkpoints such as VisionFM's, RETFound-DINOv2's
  and MedDINOv3's (``{'teacher': ...}`` with a ``backbone.`` prefix and projection-head keys).
- ``"transformers_dinov2"``: transformers' ``Dinov2Model`` files (``embeddings.*``, ``encoder.layer.N.*``),
  such as RAD-DINO's ``model.safetensors``.
- ``"transformers_segformer"``: transformers SegFormer files (``segformer_mit_*`` models only).
- ``"segzoo"``: a whole segzoo model (from :func:`segzoo.save_pretrained`); not a backbone file.

Renaming and position-embedding resampling reuse timm's own ``checkpoint_filter_fn`` of the
backbone's model class; this module only unwraps containers, drops keys that belong to
pre-training (decoders, projection heads, mask tokens) and checks the result. Before any of that,
a file whose architecture or family layout does not fit the model is refused naming both
(:mod:`segzoo.backbones.checkpoint_families`). The backbone
is pruned before loading (:class:`~segzoo.backbones.ViTBackbone` drops the final norm and the
blocks after the last feature layer), so checkpoint keys for those parts are reported as
"unused by segmentation" rather than as errors.
"""

from __future__ import annotations

import argparse
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file
from timm.models import adapt_input_conv, clean_state_dict, eva, vision_transformer
from torch import nn

from .backbones.checkpoint_families import FileSignature, family_mismatch, file_signature
from .backbones.dinov2_transformers import is_transformers_dinov2, to_meta_dinov2

__all__ = [
    "CHECKPOINT_FORMATS",
    "CheckpointError",
    "LoadReport",
    "UnsafeCheckpointError",
    "checkpoint_signature",
    "detect_checkpoint_format",
    "key_list",
    "load_backbone_checkpoint",
    "load_state_dict_strict",
    "raise_on_load_problems",
    "read_checkpoint",
]

CHECKPOINT_FORMATS = ("timm", "dinov2", "dinov3", "mae", "dino_teacher", "transformers_dinov2",
                      "transformers_segformer", "segzoo")
# the registry's per-source names for the same layouts
_FORMAT_ALIASES = {"retfound_mae": "mae", "retfound_dinov2": "dino_teacher", "visionfm": "dino_teacher",
                   "meddinov3": "dino_teacher"}
# classes a training run records next to its weights (MAE/DINO save ``args``); rebuilding one runs no code
_SAFE_EXTRA_GLOBALS = [argparse.Namespace]
_MAX_NAMED = 8  # keys named in an error message


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint that would run code or build arbitrary objects when loaded."""


@dataclass
class LoadReport:
    """What a load did, as counts with the key names kept for inspection."""

    source: str
    checkpoint_format: str
    loaded: list[str] = field(default_factory=list)
    # model weights the file lacks: refused, except where a loader allows some to stay as
    # initialised (the decode head under an encoder-only MiT file, see load_transformers_segformer)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)  # pruned from the backbone on purpose
    # left out on purpose: pre-training only (decoders, heads, mask tokens, an ImageNet classifier)
    # or a fine-tuned classifier the caller chose not to load
    dropped: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # patch embedding adapted to in_chans

    def __str__(self) -> str:
        # a printed report is an accepted load, so any missing weight was left as initialised on purpose
        missing = f"{len(self.missing)} missing" + (" (left as initialised)" if self.missing else "")
        line = (
            f"segzoo: loaded {self.source} ({self.checkpoint_format}): {len(self.loaded)} tensors loaded, "
            f"{missing}, {len(self.unexpected)} unexpected, "
            f"{len(self.unused)} unused by segmentation, {len(self.dropped)} pre-training only dropped"
        )
        if self.adapted:
            line += f", adapted to in_chans: {', '.join(self.adapted)}"
        return line


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a ``.safetensors`` or pickled (``.pth``/``.pt``/``.bin``) checkpoint into a dict.

    Pickles load with ``torch.load(weights_only=True)``: a file that needs anything beyond
    tensors, containers, numbers and ``argparse.Namespace`` is refused with
    :class:`UnsafeCheckpointError` before any of its code can run. Unreadable files
    (truncated, corrupted, not a checkpoint) raise :class:`CheckpointError` naming the file.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".pth", ".pt", ".bin"))
        hint = f" holding {', '.join(inside[:5])}: pass one of them" if inside else ": pass the weights file in it"
        raise IsADirectoryError(f"checkpoint_path {str(path)!r} is a directory{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist (checkpoint_path=...)")
    if _is_safetensors(path):
        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as err:  # safetensors raises its own error types for bad headers/short files
            raise CheckpointError(
                f"could not read {str(path)!r}: the safetensors file is truncated or corrupted ({err}); download it again"
            ) from err
    try:
        with torch.serialization.safe_globals(_SAFE_EXTRA_GLOBALS):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise UnsafeCheckpointError(
                f"refused to load {str(path)!r}: it is a pickle that needs {', '.join(unsafe)}, which "
                "torch.load(weights_only=True) does not allow because unpickling it could run code. "
                "Only if you trust the file's origin: load it yourself with torch.load(weights_only=False), "
                "save its state dict with safetensors, and pass that file instead."
            ) from err
        raise _corrupt(path, err) from err
    except Exception as err:  # zip/pickle readers raise RuntimeError, EOFError, KeyError... on damaged files
        raise _corrupt(path, err) from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a dict of tensors (a state dict)")
    return dict(obj)


def detect_checkpoint_format(checkpoint: Mapping[str, Any]) -> str:
    """Guess the published layout of ``checkpoint`` from its keys (see the module docstring)."""
    if isinstance(checkpoint.get("teacher"), Mapping):
        return "dino_teacher"
    inner = _unwrap(checkpoint)
    keys = set(inner)
    if any(k.startswith("backbone.model.") for k in keys) and any(k.startswith("decode_head.") for k in keys):
        return "segzoo"
    if is_transformers_dinov2(keys):
        return "transformers_dinov2"
    if file_signature("timm", inner).arch == "mit":
        return "transformers_segformer"
    if any(k.startswith("decoder_") for k in keys) or (isinstance(checkpoint.get("model"), Mapping) and "mask_token" in keys):
        return "mae"
    if "storage_tokens" in keys or any(k.startswith("rope_embed.") for k in keys):
        return "dinov3"
    if "mask_token" in keys or "register_tokens" in keys:
        return "dinov2"
    return "timm"


def checkpoint_signature(checkpoint: Mapping[str, Any]) -> FileSignature:
    """What ``checkpoint`` looks like: its detected layout and the architecture its keys and shapes show
    (see :mod:`segzoo.backbones.checkpoint_families`)."""
    layout = detect_checkpoint_format(checkpoint)
    try:
        return file_signature(layout, _encoder_state(dict(checkpoint), layout, [], "<checkpoint>"))
    except CheckpointError:  # a teacher without backbone weights: the loader names the file and the problem
        return FileSignature(layout, "unknown")


def load_backbone_checkpoint(
    backbone: nn.Module,
    checkpoint: str | Path | Mapping[str, Any],
    checkpoint_format: str | None = None,
    verbose: bool = True,
    model_name: str | None = None,
) -> LoadReport:
    """Load published backbone weights into a :class:`~segzoo.backbones.ViTBackbone`.

    Args:
        backbone: the (already pruned) zoo backbone; its ``.model`` is the timm ViT.
        checkpoint: a file path, or an already-read checkpoint dict.
        checkpoint_format: one of :data:`CHECKPOINT_FORMATS` (or a registry alias such as
            ``"retfound_mae"``); detected from the keys when ``None``.
        verbose: print the one-line :class:`LoadReport`.
        model_name: the zoo model's name, for the model names a refusal suggests.

    Raises:
        CheckpointError: when the file belongs to another architecture, patch size or (unless
            ``checkpoint_format`` is given) another family's layout, naming what the file looks
            like, what the model expects and the model or ``checkpoint_format`` that fits; or,
            naming keys, when backbone weights are missing, have the wrong shape, or the file
            has weights this backbone has no place for. Nothing is loaded then.
    """
    source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "<state dict>"
    raw = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else dict(checkpoint)
    fmt = _resolve_format(checkpoint_format, raw)
    if fmt == "segzoo":
        raise CheckpointError(
            f"{source} is a whole segzoo model, not backbone weights: load it with "
            "segzoo.create_model('<folder with config.json>') instead of checkpoint_path"
        )
    spec = getattr(backbone, "spec", None)
    if spec is not None:  # a file of another family fails here, naming both, before any renaming
        why = family_mismatch(checkpoint_signature(raw), spec, patch_size=backbone.patch_size,
                              format_given=checkpoint_format is not None, model_name=model_name)
        if why:
            raise CheckpointError(f"refusing {source}: {why}")
    model = backbone.model
    state, dropped = _to_timm_layout(raw, fmt, model, source)
    report = LoadReport(source=source, checkpoint_format=fmt, dropped=dropped)
    state = _adapt_input_channels(state, model, report)
    expected, names = _base_state_dict(model)
    pruned_depth = len(model.blocks)
    source_depth = int(getattr(backbone, "source_depth", pruned_depth))
    for key in list(state):
        if key not in expected and _pruned_on_purpose(key, pruned_depth, source_depth):
            report.unused.append(key)
            del state[key]
    report.missing = [k for k in expected if k not in state]
    report.unexpected = [k for k in state if k not in expected]
    report.mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state if k in expected and state[k].shape != expected[k].shape
    ]
    raise_on_load_problems(report, hint=_size_hint(backbone))
    result = model.load_state_dict({names[k]: v for k, v in state.items()}, strict=False)
    left = [k for k in result.missing_keys if not is_lora_adapter_key(k)] + list(result.unexpected_keys)
    assert not left, f"keys checked above did not load: {left}"  # a bug here, never a user error
    report.loaded = sorted(state)
    if verbose:
        print(report)
    return report


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, verbose: bool = True) -> LoadReport:
    """Load a whole-model state dict (from :func:`segzoo.save_pretrained`), every key accounted for."""
    expected = model.state_dict()
    report = LoadReport(source=source, checkpoint_format="segzoo")
    report.missing = [k for k in expected if k not in state]
    report.unexpected = [k for k in state if k not in expected]
    report.mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state if k in expected and state[k].shape != expected[k].shape
    ]
    raise_on_load_problems(
        report,
        hint="The saved weights do not fit the rebuilt model: an override changed a shape (to change num_classes, "
        "reload as saved and replace the classifier), or config.json does not belong to these weights",
    )
    model.load_state_dict(dict(state), strict=True)
    report.loaded = sorted(state)
    if verbose:
        print(report)
    return report


# -- helpers ----------------------------------------------------------------------------------


def _base_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's state dict as without LoRA, and each of its keys' name in the model.

    peft's LoRA layers keep the original weight as ``<layer>.base_layer.weight`` next to
    ``lora_A``/``lora_B``: published weights load into the base layers, adapters keep their values.
    """
    state, names = {}, {}
    for name, tensor in model.state_dict().items():
        if is_lora_adapter_key(name):
            continue
        plain = plain_state_key(name)
        state[plain], names[plain] = tensor, name
    return state, names


def plain_state_key(name: str) -> str:
    """A state-dict key as in the model without LoRA (peft keeps the original under ``.base_layer.``)."""
    return name.replace(".base_layer.", ".")


def is_lora_adapter_key(name: str) -> bool:
    """Whether a state-dict key belongs to a LoRA adapter (``lora_A`` / ``lora_B``)."""
    return ".lora_" in name


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    # safetensors files start with an 8-byte little-endian header length, then '{'
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _unsafe_globals(path: Path) -> list[str]:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # a damaged file: not evidence of unsafe content
        return []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _SAFE_EXTRA_GLOBALS}
    return [n for n in names if n not in allowed]


def _corrupt(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(
        f"could not read checkpoint {str(path)!r}: the file is truncated, corrupted or not a PyTorch/safetensors "
        f"checkpoint ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); download it again"
    )


def _resolve_format(checkpoint_format: str | None, raw: Mapping[str, Any]) -> str:
    detected = detect_checkpoint_format(raw)
    if checkpoint_format is None:
        return detected
    fmt = _FORMAT_ALIASES.get(checkpoint_format, checkpoint_format)
    if fmt not in CHECKPOINT_FORMATS:
        raise ValueError(f"unknown checkpoint_format {checkpoint_format!r}; choose one of {CHECKPOINT_FORMATS}")
    if fmt == "transformers_segformer":  # this loader serves ViT backbones
        vit_formats = [f for f in CHECKPOINT_FORMATS if f not in ("transformers_segformer", "segzoo")]
        raise ValueError("checkpoint_format='transformers_segformer' is the layout of segformer_mit_* models' files; "
                         f"a ViT backbone takes one of {vit_formats}")
    return fmt


def _unwrap(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The tensor dict inside the usual training-checkpoint containers, without the ``module.`` (DDP)
    and ``_orig_mod.`` (torch.compile) prefixes, which timm's ``clean_state_dict`` removes."""
    state = dict(checkpoint)
    for key in ("model_ema", "model", "module", "state_dict"):
        if isinstance(checkpoint.get(key), Mapping):
            state = dict(checkpoint[key])
            break
    return clean_state_dict(state)


def _to_timm_layout(raw: dict[str, Any], fmt: str, model: nn.Module, source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Unwrap, drop pre-training-only keys, then let timm's converter rename/resample."""
    dropped: list[str] = []
    state = _encoder_state(raw, fmt, dropped, source)
    if fmt == "dino_teacher":
        dropped += [k for k in ("masked_embed",) if state.pop(k, None) is not None]  # iBOT's MIM token
    if fmt == "transformers_dinov2":
        state = to_meta_dinov2(state, dropped)
    if fmt == "mae":
        for key in [k for k in state if k.startswith("decoder_") or k == "mask_token"]:
            dropped.append(key)
            del state[key]
    if fmt == "dinov3" or "storage_tokens" in state:
        _drop_dinov3_training_keys(state, model, dropped, source)
    if "mask_token" in state:  # DINOv2 layout: timm's converter keys on it, then discards it
        dropped.append("mask_token")
    non_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise CheckpointError(
            f"{source} does not look like {fmt!r} weights: entries {non_tensors[:_MAX_NAMED]} are not tensors"
        )
    return _timm_filter(model)(state, model), dropped


def _encoder_state(raw: dict[str, Any], fmt: str, dropped: list[str], source: str) -> dict[str, Any]:
    """The file's encoder tensors, keys as in the file: containers unwrapped, a teacher's prefix removed."""
    if fmt == "dino_teacher":
        return _strip_teacher_prefix(dict(raw["teacher"]) if "teacher" in raw else _unwrap(raw), dropped, source)
    return _unwrap(raw)


def _strip_teacher_prefix(teacher: dict[str, Any], dropped: list[str], source: str) -> dict[str, Any]:
    """Keep the encoder (``backbone.`` / ``module.backbone.`` keys); the rest are projection heads."""
    prefixes = ("module.backbone.", "backbone.", "module.")
    prefix = next((p for p in prefixes if any(k.startswith(p) for k in teacher)), "")
    if not prefix:
        return teacher
    kept = {k[len(prefix):]: v for k, v in teacher.items() if k.startswith(prefix)}
    dropped += [k for k in teacher if not k.startswith(prefix)]  # DINO/iBOT projection heads
    if not kept:
        raise CheckpointError(f"{source}: the 'teacher' dict has no backbone weights under {prefix!r}")
    return kept


def _drop_dinov3_training_keys(state: dict[str, Any], model: nn.Module, dropped: list[str], source: str) -> None:
    """Meta's DINOv3 files carry buffers timm recomputes (RoPE periods, bias masks), the
    mask token, and a qkv bias that is zero in the distilled models timm builds without one."""
    has_q_bias = any(name.endswith("attn.q_bias") for name, _ in model.named_parameters())
    for key in list(state):
        if key.endswith((".periods", ".bias_mask")) or key == "mask_token" or key.startswith("local_cls_norm"):
            dropped.append(key)
            del state[key]
        elif key.endswith("attn.qkv.bias") and not has_q_bias:
            if torch.count_nonzero(state[key]):
                raise CheckpointError(
                    f"{source}: {key} is non-zero but this DINOv3 backbone has no qkv bias (timm builds the "
                    "distilled models without one); these weights need timm's '*_dinov3_qkvb' variant"
                )
            dropped.append(key)
            del state[key]


def _timm_filter(model: nn.Module):
    if isinstance(model, eva.Eva):
        return eva.checkpoint_filter_fn
    if isinstance(model, vision_transformer.VisionTransformer):
        return vision_transformer.checkpoint_filter_fn
    raise TypeError(f"no checkpoint converter for {type(model).__name__}")


def _adapt_input_channels(state: dict[str, torch.Tensor], model: nn.Module, report: LoadReport) -> dict[str, torch.Tensor]:
    key = "patch_embed.proj.weight"
    weight = state.get(key)
    target = model.patch_embed.proj.weight
    if weight is not None and weight.ndim == 4 and weight.shape[1] != target.shape[1] and weight.shape[1] == 3:
        state[key] = adapt_input_conv(target.shape[1], weight)
        report.adapted.append(f"{key} 3 -> {target.shape[1]} channels")
    return state


def _pruned_on_purpose(key: str, pruned_depth: int, source_depth: int) -> bool:
    """Final norm / head / blocks past the last feature index: removed from the model by design."""
    root = key.split(".", 1)[0]
    if root in ("norm", "fc_norm", "head"):
        return True
    match = re.match(r"blocks\.(\d+)\.", key)
    return bool(match) and pruned_depth <= int(match.group(1)) < source_depth


def raise_on_load_problems(report: LoadReport, hint: str) -> None:
    """The one refusal every loader (ViT files, transformers SegFormer files) gives: nothing loads
    when weights are missing, mis-shaped or without a place, and the message names them."""
    problems = []
    if report.missing:
        problems.append(f"{len(report.missing)} model weights missing from the file: {key_list(report.missing)}")
    if report.mismatched:
        problems.append(f"{len(report.mismatched)} shape mismatches: {key_list(report.mismatched)}")
    if report.unexpected:
        problems.append(f"{len(report.unexpected)} file weights the model has no place for: {key_list(report.unexpected)}")
    if problems:
        raise CheckpointError(
            f"refusing a partial load of {report.source} ({report.checkpoint_format} layout): "
            + "; ".join(problems) + f". {hint}"
        )


def key_list(keys: list[str]) -> str:
    """The first few keys, and how many more, for messages."""
    shown = ", ".join(keys[:_MAX_NAMED])
    return shown + (f", ... ({len(keys) - _MAX_NAMED} more)" if len(keys) > _MAX_NAMED else "")


def _size_hint(backbone: nn.Module) -> str:
    spec = getattr(backbone, "spec", None)
    name = f"{spec.family} {spec.size} ({spec.timm_arch})" if spec is not None else type(backbone.model).__name__
    return (
        f"Check that the file holds {name} weights of the same size and variant; "
        "checkpoint_format= overrides the detected layout"
    )
