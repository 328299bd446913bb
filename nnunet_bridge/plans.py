"""Add a zoo configuration to a dataset's nnU-Net plans.

nnU-Net's predictor rebuilds a network only from the results folder's ``plans.json``,
the checkpoint's trainer name and its configuration name, so the model must live in the
plans: ``plan`` writes a configuration ``2d_<model name>`` that inherits everything from
``2d`` (same preprocessed data, spacing, normalisation) and replaces the architecture
with :func:`nnunet_bridge.network.build_zoo_network` plus the zoo name and kwargs. The
patch size is snapped to a multiple of the ViT patch size (up when the dataset's median image
allows it, else down, with a note), the batch size is chosen for
a ViT rather than from nnU-Net's UNet memory estimate, and the resolved bridge config is
stored under the configuration's ``segzoo`` key. A configuration that has been trained is
immutable: re-planning it with different settings is an error naming the differences.
Settings that contradict each other or that the model does not take are refused before the
plans file is touched.

A high-resolution configuration (``resample_to=(H, W)``, ``segzoo-nnunet plan --patch-size H W``)
also sets its own ``spacing``: nnU-Net resamples every slice so that the dataset's median image is
``H x W`` pixels and trains on ``H x W`` patches of that (its own preprocessed data, written by
nnU-Net's preprocessing right after planning). It is named ``2d_<model name>_<H>`` (``_<H>x<W>``
when the sides differ).
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import DictConfig

import segzoo

from .config import ConfigError, config_to_dict, load_config, zoo_model_name
from .files import write_atomic
from .network import arch_kwargs_from_config, create_zoo_model

__all__ = [
    "NETWORK_CLASS_NAME",
    "configuration_name_for",
    "normalisation_notes",
    "plan",
    "plans_path",
    "load_plans",
    "stored_config",
    "trained_checkpoints",
    "diff_dicts",
]

NETWORK_CLASS_NAME = "nnunet_bridge.network.build_zoo_network"
BASE_CONFIGURATION = "2d"
# nnU-Net normalisations that leave intensities in [0, 1]: the backbone's mean/std then apply
_UNIT_RANGE_SCHEMES = {"RGBTo01Normalization", "RescaleTo01Normalization"}
# segformer_dinov3_large trains with batch 8 at 512x512 (1024 tokens) in bf16 with a 21.7 GiB
# peak (README, "On a GPU": bench_models.py on an H100), so it fits a 24 GiB card; other sizes
# scale the batch by their token count and width
_REFERENCE_TOKENS_X_BATCH = 8 * 1024
_SIZE_FACTOR = {"small": 4.0, "base": 2.0, "large": 1.0, "giant": 0.5}
# what plan says about channels whose inputs the backbone's own mean/std do not fit, by nnU-Net scheme
_SCHEME_NOTES = {
    "CTNormalization": "nnU-Net's CT normalisation (clipped to the 0.5-99.5 percentiles of the training set's "
                       "labelled voxels, then z-scored with their mean and sd) already standardises them, so the "
                       "backbone's RGB mean/std are not applied; keep the name 'CT' for CT",
    "ZScoreNormalization": "nnU-Net z-scores each image ('zscore'), which already standardises them, so the "
                           "backbone's RGB mean/std are not applied",
    "ZScoreByDefault": "a name nnU-Net does not map, so it z-scores each image and the backbone's RGB mean/std "
                       "are not applied. Name CT channels 'CT' (one intensity mapping for every scan), and the R, G, "
                       "B channels of 8-bit photographs 'rgb_to_0_1' (the backbone then gets the inputs it was "
                       "trained on)",
    "NoNormalization": "passed to the network unchanged ('noNorm'): the backbone sees raw intensities; name them "
                       "'zscore' (or 'CT' for CT) unless they are already standardised",
    "RGBTo01Normalization": "scaled to [0, 1], but the backbone's mean/std apply only when every channel is, so "
                            "nothing more is applied",
}
_SCHEME_NOTES["RescaleTo01Normalization"] = _SCHEME_NOTES["RGBTo01Normalization"]


def configuration_name_for(config: DictConfig, resample_to: Sequence[int] | None = None) -> str:
    """``2d_<zoo model name>``, e.g. ``2d_segformer_dinov3_large``; with ``resample_to``
    ``2d_segformer_dinov3_large_896`` (or ``..._896x640``)."""
    name = f"{BASE_CONFIGURATION}_{zoo_model_name(config)}"
    if resample_to:
        height, width = (int(s) for s in resample_to)
        name += f"_{height}" if height == width else f"_{height}x{width}"
    return name


def plans_path(dataset: str | int, plans_identifier: str = "nnUNetPlans") -> Path:
    """``$nnUNet_preprocessed/DatasetXXX_Name/<plans_identifier>.json``."""
    # nnU-Net reads its folders from the environment when first imported: not before this call
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    return Path(str(nnUNet_preprocessed)) / maybe_convert_to_dataset_name(dataset) / f"{plans_identifier}.json"


def load_plans(dataset: str | int, plans_identifier: str = "nnUNetPlans") -> dict[str, Any]:
    """The dataset's plans; a clear error if nnU-Net's planning has not been run yet."""
    path = plans_path(dataset, plans_identifier)
    if not path.is_file():
        raise FileNotFoundError(
            f"no nnU-Net plans at {path}; run `nnUNetv2_plan_and_preprocess -d {dataset} -c 2d` first"
        )
    return json.loads(path.read_text())


def plan(
    dataset: str | int,
    config: DictConfig | None = None,
    configuration_name: str | None = None,
    plans_identifier: str = "nnUNetPlans",
    verbose: bool = True,
    resample_to: Sequence[int] | None = None,
    preprocess: bool = True,
) -> str:
    """Add (or update, while untrained) the zoo configuration for ``config``; returns its name.

    ``resample_to=(H, W)`` plans a high-resolution configuration (see the module docstring) and,
    with ``preprocess``, runs nnU-Net's preprocessing for it when its data are not there yet."""
    config = config if config is not None else load_config()
    resample_to = _snapped_request(config, resample_to)
    name = configuration_name or configuration_name_for(config, resample_to)
    if "__" in name:
        raise ConfigError(f"configuration name {name!r} must not contain '__' (nnU-Net splits folder names on it)")
    entry = segzoo.model_entry(zoo_model_name(config))
    if config.lora.enabled and entry.supports_lora is False:
        raise ConfigError(f"lora.enabled is true, but {entry.name} takes no LoRA: "
                          f"{entry.backbone.backbone_class.lora_refusal}. Set lora.enabled: false in your YAML")
    if config.lora.enabled and not config.model.pretrained and not config.model.checkpoint_path:
        # LoRA freezes the backbone: without weights that would train adapters on a random network
        raise ConfigError(
            "lora.enabled is true, but the backbone gets no weights (model.pretrained is false and "
            "model.checkpoint_path is empty): LoRA would freeze a randomly initialised backbone and train only "
            "its adapters. Set model.pretrained: true or model.checkpoint_path: <backbone weights>, or set "
            "lora.enabled: false to train the whole backbone from scratch"
        )
    plans = load_plans(dataset, plans_identifier)
    configurations = plans["configurations"]
    if BASE_CONFIGURATION not in configurations:
        raise ConfigError(
            f"the plans have no {BASE_CONFIGURATION!r} configuration to inherit from "
            f"(found {sorted(configurations)}); run `nnUNetv2_plan_and_preprocess -d {dataset} -c 2d`"
        )
    base = _resolve(configurations, BASE_CONFIGURATION)
    channels = _channel_names(dataset, plans_identifier)
    new = _zoo_configuration(config, base, plans, channels, resample_to)
    if resample_to:
        _resample(new, config, base, f"{plans_identifier}_{name}")
    _check_model_builds(new["architecture"]["arch_kwargs"], len(base.get("normalization_schemes", [])) or 1)
    old = configurations.get(name)
    if old is not None and old != new:
        differences = diff_dicts(_comparable(old), _comparable(new))
        trained = trained_checkpoints(plans["dataset_name"], plans_identifier, name)
        if trained and differences:
            raise ConfigError(
                f"configuration {name!r} is already trained ({trained[0]}) and cannot change; differing keys: "
                f"{', '.join(differences)}. Plan the new settings under another name "
                f"(`segzoo-nnunet plan {dataset} --name 2d_my_variant ...`)"
            )
    configurations[name] = new
    _write_json(plans_path(dataset, plans_identifier), plans)
    if verbose:
        print(
            f"Configuration {name!r} written to {plans_path(dataset, plans_identifier)}: model "
            f"{new['architecture']['arch_kwargs']['model_name']}, patch size {new['patch_size']}, "
            f"batch size {new['batch_size']}, input normalisation "
            f"{new['architecture']['arch_kwargs']['input_normalization']}"
        )
    if resample_to:
        _preprocess(dataset, plans["dataset_name"], name, new, old, plans_identifier, preprocess)
    return name


def normalisation_notes(schemes: Sequence[str], channel_names: Sequence[str] | None = None) -> list[str]:
    """One line per kind of channel on what reaches the network, fitted to nnU-Net's scheme for it
    (``normalization_schemes`` of the plans; ``channel_names`` from dataset.json, same order).
    Empty when every channel is scaled to [0, 1], where the backbone's own mean/std apply."""
    if schemes and all(s in _UNIT_RANGE_SCHEMES for s in schemes):
        return []
    names = list(channel_names) if channel_names and len(channel_names) == len(schemes) else [None] * len(schemes)
    groups: dict[str, list[str]] = {}
    for index, (scheme, name) in enumerate(zip(schemes, names)):
        label = f"{index} ({name!r})" if name is not None else str(index)
        key = scheme
        if scheme == "ZScoreNormalization" and name is not None and name.casefold() != "zscore":
            key = "ZScoreByDefault"  # a name nnU-Net does not map: z-score is its fallback, maybe not a choice
        groups.setdefault(key, []).append(label)
    notes = []
    for key, labels in groups.items():
        which = f"channel{'s' if len(labels) > 1 else ''} {', '.join(labels)}"
        notes.append(f"{which}: " + _SCHEME_NOTES.get(key, f"nnU-Net normalises with {key}; the backbone's "
                                                            "mean/std are not applied"))
    return notes


def stored_config(configuration: dict[str, Any]) -> dict[str, Any] | None:
    """The bridge config ``plan`` stored in a plans configuration (None for non-zoo configurations)."""
    return configuration.get("segzoo")


def trained_checkpoints(dataset_name: str, plans_identifier: str, configuration_name: str) -> list[str]:
    """Checkpoints of any trainer for this configuration under ``$nnUNet_results``."""
    results = os.environ.get("nnUNet_results")
    if not results:
        return []
    pattern = os.path.join(results, dataset_name, f"*__{plans_identifier}__{configuration_name}", "fold_*", "checkpoint_*.pth")
    return sorted(glob.glob(pattern))


def diff_dicts(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (missing keys included)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += diff_dicts(old.get(key, "<missing>"), new.get(key, "<missing>"), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix[:-1]} ({old!r} -> {new!r})"]


# -- helpers ---------------------------------------------------------------------------


def _zoo_configuration(config: DictConfig, base: dict[str, Any], plans: dict[str, Any],
                       channel_names: list[str] | None = None, snapped: list[int] | None = None) -> dict[str, Any]:
    arch_kwargs = arch_kwargs_from_config(config, _input_normalization(config, base, channel_names))
    patch = _patch_multiple(config, arch_kwargs["model_name"])
    wanted = list(config.train.patch_size) if config.train.patch_size is not None else list(base["patch_size"])
    patch_size = snapped or _snap_patch_size([int(s) for s in wanted], patch, base.get("median_image_size_in_voxels"))
    batch_size = config.train.batch_size or _default_batch_size(arch_kwargs["model_name"], patch_size, patch, base)
    stored = config_to_dict(config)
    stored["train"]["batch_size"], stored["train"]["patch_size"] = int(batch_size), patch_size
    return {
        "inherits_from": BASE_CONFIGURATION,
        "patch_size": patch_size,
        "batch_size": int(batch_size),
        "architecture": {
            "network_class_name": NETWORK_CLASS_NAME,
            "arch_kwargs": arch_kwargs,
            "_kw_requires_import": [],
        },
        "segzoo": stored,
    }


def _snap_patch_size(wanted: list[int], patch: int, median_shape: list[float] | None) -> list[int]:
    """Each side of ``wanted`` as a multiple of the backbone's ``patch``: rounded up when the
    dataset's median image (nnU-Net's ``median_image_size_in_voxels``) is at least that big,
    else down (never below one patch). Prints what changed and why."""
    snapped, notes = [], []
    median = list(median_shape)[-len(wanted):] if median_shape else None
    for axis, size in enumerate(wanted):
        down, up = max(patch, size // patch * patch), -(-size // patch) * patch
        if size % patch == 0:
            snapped.append(size)
        elif median is not None and up <= median[axis]:
            snapped.append(up)
        else:
            snapped.append(down)
            why = (f"the median image is {median[axis]:g} px" if median is not None
                   else "the plans hold no median image size")
            notes.append(f"side {axis} rounded down to {down}, not up to {up}: {why}")
    if snapped != wanted:
        print(f"Note: patch size {wanted} -> {snapped}, a multiple of the backbone's patch size {patch}"
              + (f" ({'; '.join(notes)})" if notes else "") + ". Set train.patch_size to choose it yourself.")
    return snapped


def _snapped_request(config: DictConfig, resample_to: Sequence[int] | None) -> list[int] | None:
    """A high-resolution request as the nearest multiples of the backbone's patch (the size it names)."""
    if resample_to is None:
        return None
    if len(resample_to) != 2 or min(int(s) for s in resample_to) < 1:
        raise ConfigError(f"--patch-size takes two positive sizes, height and width; got {list(resample_to)}")
    if config.train.patch_size is not None:
        raise ConfigError("--patch-size resamples the images and sets the patch; train.patch_size in the YAML sets "
                          "only the patch. Give one of them")
    wanted = [int(s) for s in resample_to]
    patch = _patch_multiple(config, zoo_model_name(config))
    size = [max(patch, round(s / patch) * patch) for s in wanted]
    if size != wanted:
        print(f"Note: --patch-size {wanted} -> {size}, the nearest multiple of the backbone's patch size {patch}")
    return size


def _resample(new: dict[str, Any], config: DictConfig, base: dict[str, Any], data_identifier: str) -> None:
    """Make ``new`` (planned at the requested patch size) a high-resolution configuration: the spacing
    that resamples the median image to that size, and its own preprocessed data."""
    size, batch = new["patch_size"], new["batch_size"]
    patch = _patch_multiple(config, new["architecture"]["arch_kwargs"]["model_name"])
    median, spacing = base.get("median_image_size_in_voxels"), base.get("spacing")
    if not median or not spacing:
        raise ConfigError("the plans' 2d configuration has no median_image_size_in_voxels or spacing to resample "
                          "from; run `nnUNetv2_plan_and_preprocess -d DATASET -c 2d` again")
    median, spacing = [float(m) for m in median][-2:], [float(s) for s in spacing][-2:]
    new_spacing = [s * m / t for s, m, t in zip(spacing, median, size)]
    default = _snapped_quietly(list(base["patch_size"]), patch)
    tokens, tokens_2d = _tokens(size, patch), _tokens(default, patch)
    new.update(spacing=new_spacing, median_image_size_in_voxels=[float(t) for t in size],
               data_identifier=data_identifier)
    scale = " x ".join(f"{t / m:.3g}" for t, m in zip(size, median))
    print(f"High-resolution plan: the median image ({' x '.join(f'{m:g}' for m in median)} px at "
          f"{' x '.join(f'{s:.4g}' for s in spacing)} mm) is resampled by {scale} to {size[0]} x {size[1]} px "
          f"({' x '.join(f'{s:.4g}' for s in new_spacing)} mm); {tokens} tokens per patch against {tokens_2d} "
          f"for the plain plan's {default[0]} x {default[1]} (memory and time per image about {tokens / tokens_2d:.1f}x, "
          f"more for attention); batch size {batch} from the memory model")
    if any(t > m for t, m in zip(size, median)):
        print(f"Note: {size[0]} x {size[1]} exceeds the median image size; nnU-Net upsamples the images, which adds "
              "no detail: it gives thin structures and small lesions more tokens, at the cost above")


def _preprocess(dataset: str | int, dataset_name: str, name: str, new: dict[str, Any], old: dict[str, Any] | None,
                plans_identifier: str, run: bool) -> None:
    """nnU-Net's preprocessing of a configuration with its own spacing, unless its data are current."""
    from nnunetv2.configuration import default_num_processes
    from nnunetv2.paths import nnUNet_preprocessed

    folder = Path(str(nnUNet_preprocessed)) / dataset_name / new["data_identifier"]
    current = folder.is_dir() and any(folder.iterdir()) and old is not None and old.get("spacing") == new["spacing"]
    command = f"nnUNetv2_preprocess -d {dataset} -plans_name {plans_identifier} -c {name}"
    if current:
        return
    if not run:
        print(f"Preprocess it before training: {command}")
        return
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset

    print(f"Preprocessing {name} at its own spacing (what `{command} -np {default_num_processes}` does)")
    preprocess_dataset(int(dataset_name[len("Dataset"):].split("_")[0]), plans_identifier, [name],
                       [default_num_processes], verbose=False, show_progress_bar=False)


def _snapped_quietly(size: list[int], patch: int) -> list[int]:
    return [max(patch, s // patch * patch) for s in size]


def _tokens(size: list[int], patch: int) -> int:
    return (size[0] // patch) * (size[1] // patch)


def _check_model_builds(arch_kwargs: dict[str, Any], in_chans: int) -> None:
    """Build the planned model on the meta device (no memory, no weights, well under a second)
    so that a key the model, its head or timm's ViT does not take is refused now, with the zoo's
    "did you mean", instead of when training starts (or, as timm's bare TypeError, never named)."""
    try:
        with torch.device("meta"):
            create_zoo_model(arch_kwargs["model_name"], in_chans, 2, arch_kwargs["model_kwargs"])
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"the model settings do not fit {arch_kwargs['model_name']}: {err}. Fix the key in the YAML's model "
            "section (model.kwargs holds create_model's keywords, model.kwargs.backbone_kwargs timm's ViT arguments)"
        ) from None


def _comparable(configuration: dict[str, Any]) -> dict[str, Any]:
    """What fixes a trained model: architecture, patch size (tiling) and the model/LoRA sections."""
    stored = stored_config(configuration) or {}
    return {
        "architecture": configuration.get("architecture"),
        "patch_size": configuration.get("patch_size"),
        "spacing": configuration.get("spacing"),  # a high-resolution configuration resamples
        "model": stored.get("model"),
        "lora": stored.get("lora"),
    }


def _input_normalization(config: DictConfig, base: dict[str, Any], channel_names: list[str] | None = None) -> str:
    choice = config.model.input_normalization
    if choice != "auto":
        return choice
    schemes = base.get("normalization_schemes", [])
    if schemes and all(s in _UNIT_RANGE_SCHEMES for s in schemes):
        return "backbone"
    for note in normalisation_notes(schemes, channel_names):
        print(f"Note: {note}")
    return "none"


def _channel_names(dataset: str | int, plans_identifier: str) -> list[str] | None:
    """dataset.json's channel names in channel order (nnU-Net copies it next to the plans)."""
    path = plans_path(dataset, plans_identifier).parent / "dataset.json"
    try:
        names = json.loads(path.read_text())["channel_names"]
        return [str(names[k]) for k in sorted(names, key=int)]
    except (OSError, ValueError, KeyError):
        return None


def _patch_multiple(config: DictConfig, model_name: str) -> int:
    backbone_kwargs = dict(config.model.kwargs.get("backbone_kwargs", {}) or {})
    if "patch_size" in backbone_kwargs:
        return int(backbone_kwargs["patch_size"])
    spec = segzoo.model_entry(model_name).backbone
    if spec is None:
        raise ConfigError(f"cannot tell the patch size of {model_name!r}; set model.kwargs.backbone_kwargs.patch_size")
    return int(spec.patch_size)


def _default_batch_size(model_name: str, patch_size: list[int], patch: int, base: dict[str, Any]) -> int:
    """Scale the ViT-L reference (8 images of 1024 tokens) by token count and backbone size,
    never above nnU-Net's 2d batch (which caps it at 5% of the dataset), never below 2."""
    tokens = _tokens(patch_size, patch)
    entry = segzoo.model_entry(model_name)
    size = entry.backbone.size if entry.backbone is not None else ""
    by_memory = int(_REFERENCE_TOKENS_X_BATCH * _SIZE_FACTOR.get(size, 1.0) / max(tokens, 1))
    return max(2, min(by_memory, int(base["batch_size"])))


def _resolve(configurations: dict[str, Any], name: str) -> dict[str, Any]:
    configuration = dict(configurations[name])
    parent = configuration.get("inherits_from")
    if parent:
        merged = _resolve(configurations, parent)
        merged.update(configuration)
        return merged
    return configuration


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(str(path), json.dumps(data, indent=4).encode())
