"""transformers SegFormer checkpoints into ``segformer_mit_*`` models.

NVIDIA publishes SegFormer as transformers files: ``nvidia/mit-b*`` (ImageNet encoders) and
``nvidia/segformer-b*-finetuned-*`` (whole fine-tuned models). Both load here, in
transformers' saved layout or in the module layout of transformers >= 5, with the same
checks and load report as the ViT families' files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from timm.models import adapt_input_conv
from torch import nn

from .._weights import (CheckpointError, LoadReport, checkpoint_signature, detect_checkpoint_format, key_list,
                        raise_on_load_problems, read_checkpoint)
from .checkpoint_families import family_mismatch
from .specs import BACKBONES

__all__ = ["CHECKPOINT_FORMAT", "load_segformer_checkpoint", "load_transformers_segformer"]

CHECKPOINT_FORMAT = "transformers_segformer"
_WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")  # what transformers' save_pretrained writes


def load_transformers_segformer(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    include_classifier: bool = True,
    verbose: bool = True,
) -> LoadReport:
    """Load a transformers SegFormer checkpoint into a ``segformer_mit_*`` model.

    Args:
        model: a model built by ``segformer_mit_b*``.
        checkpoint: a ``model.safetensors`` / ``pytorch_model.bin`` file, a folder
            holding one (a transformers ``save_pretrained`` folder), or a state dict.
            Accepts ``SegformerForSemanticSegmentation`` (encoder + decode head),
            ``SegformerForImageClassification`` (encoder; its ImageNet classifier is
            dropped) and bare ``SegformerModel`` files, in transformers' saved layout or
            in the module layout of transformers >= 5.
        include_classifier: ``False`` keeps the model's own final 1x1 classifier (to
            fine-tune a fine-tuned model on other classes).
        verbose: print the one-line :class:`~segzoo.LoadReport`.

    Returns:
        The :class:`~segzoo.LoadReport`: ``missing`` lists the weights left as
        initialised (the decode head of an encoder-only checkpoint, or the classifier
        with ``include_classifier=False``), ``dropped`` the checkpoint keys left out
        (an ImageNet classifier, or the checkpoint's classifier).

    Raises:
        CheckpointError: naming keys, when any other weight is missing, has the wrong
            shape, or the file has weights the model has no place for (nothing is
            loaded then); or when the file is unreadable or a whole segzoo model.
    """
    if getattr(getattr(model, "backbone", None), "kind", None) != "mit":
        raise TypeError(f"expected a segformer_mit_* model, got {type(model).__name__}; build it with "
                        "segzoo.create_model('segformer_mit_b0', ...)")
    state, source = _read_transformers_checkpoint(checkpoint, model)
    report = _load_state(model, state, source, include_classifier)
    if verbose:
        print(report)
    return report


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                include_classifier: bool) -> LoadReport:
    """Map ``state`` onto the model, check it as the ViT loader does, then load it strictly."""
    target = model.state_dict()
    report = LoadReport(source=source, checkpoint_format=CHECKPOINT_FORMAT)
    loaded: dict[str, torch.Tensor] = {}
    in_file: set[str] = set()  # zoo keys the file has, loaded or not
    wrong_shape: set[str] = set()  # reported as mismatched, not again as missing
    for key, value in state.items():
        zoo_key = _zoo_key(key, target)
        if zoo_key is None:
            # SegformerForImageClassification's ImageNet head has no place in a segmenter
            (report.dropped if key.startswith("classifier.") else report.unexpected).append(key)
            continue
        in_file.add(zoo_key)
        if zoo_key.startswith("decode_head.classifier.") and not include_classifier:
            report.dropped.append(key)
            continue
        expected = target[zoo_key].shape
        is_rgb_patch_filter = value.ndim == 4 and value.shape[1] == 3 and value.shape[0] == expected[0]
        if is_rgb_patch_filter and expected[1] == model.in_chans != 3:
            value = adapt_input_conv(expected[1], value)  # in_chans != 3: timm's RGB-filter adaptation
            report.adapted.append(f"{key} 3 -> {expected[1]} channels")
        if value.shape != expected:
            report.mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(expected)}")
            wrong_shape.add(zoo_key)
            continue
        loaded[zoo_key] = value
    has_head = any(k.startswith("decode_head.") for k in in_file)
    absent = [k for k in target if k not in loaded and k not in wrong_shape]
    fresh = [k for k in absent if _may_stay_initialised(k, has_head, include_classifier)]
    report.missing = [k for k in absent if k not in fresh]
    raise_on_load_problems(report, hint=_fit_hint(model, report))
    # every key accounted for: the ones left as initialised keep the model's own values
    model.load_state_dict({**{k: target[k] for k in fresh}, **loaded}, strict=True)
    report.loaded = sorted(loaded)
    report.missing = [k for k in fresh if not k.endswith("num_batches_tracked")]  # a counter, not a weight
    return report


def _may_stay_initialised(key: str, has_head: bool, include_classifier: bool) -> bool:
    """The decode head under an encoder-only file, the classifier when not included, and
    BatchNorm counters (files saved by older torch lack them)."""
    if key.endswith("num_batches_tracked"):
        return True
    if not key.startswith("decode_head."):
        return False
    return not has_head or (not include_classifier and key.startswith("decode_head.classifier."))


def _fit_hint(model: nn.Module, report: LoadReport) -> str:
    hint = ("Check the MiT size: build the segformer_mit_b* model whose size matches the checkpoint "
            f"(this one is {model.model_name or 'not a registered size'})")
    if any(m.startswith("decode_head.classifier.") for m in report.mismatched):
        hint = ("For another number of classes, build the model with the checkpoint's num_classes or load with "
                f"include_classifier=False. {hint}")
    return hint


def load_segformer_checkpoint(model: nn.Module, checkpoint: str | os.PathLike, checkpoint_format: str | None = None,
                              verbose: bool = True) -> LoadReport:
    """What ``pretrained=True`` / ``checkpoint_path=`` do for a ``segformer_mit_*`` model: the
    transformers file loads through :func:`load_transformers_segformer`; a fine-tuned
    classifier for another class count is left as initialised, and said so."""
    if checkpoint_format not in (None, CHECKPOINT_FORMAT):
        raise ValueError(f"segformer_mit_* models load transformers SegFormer checkpoints only; got "
                         f"checkpoint_format={checkpoint_format!r}")
    state, source = _read_transformers_checkpoint(checkpoint, model)
    # a fine-tuned file for other classes: keep everything but the final 1x1 classifier
    classifier = next((v for k, v in state.items() if k.endswith("decode_head.classifier.weight")), None)
    include_classifier = classifier is None or classifier.shape[0] == model.num_classes
    report = _load_state(model, state, source, include_classifier)
    if verbose:
        print(report if include_classifier else f"{report}; classifier re-initialised for {model.num_classes} classes")
    return report


# -- checkpoint helpers ----------------------------------------------------------------

# transformers' saved SegFormer layout -> its module layout since transformers 5 (facts from its conversion table)
_RENAMES = [
    (r"encoder\.patch_embeddings\.(\d+)\.", r"stages.\1.patch_embeddings."),
    (r"encoder\.block\.(\d+)\.", r"stages.\1.blocks."),
    (r"encoder\.layer_norm\.(\d+)\.", r"stages.\1.layer_norm."),
    (r"attention\.self\.query\.", "attention.q_proj."),
    (r"attention\.self\.key\.", "attention.k_proj."),
    (r"attention\.self\.value\.", "attention.v_proj."),
    (r"attention\.self\.sr\.", "attention.sequence_reduction.sequence_reduction."),
    (r"attention\.self\.layer_norm\.", "attention.sequence_reduction.layer_norm."),
    (r"attention\.output\.dense\.", "attention.o_proj."),
    (r"mlp\.dense1\.", "mlp.fc1."),
    (r"mlp\.dense2\.", "mlp.fc2."),
    (r"layer_norm_1\.", "layernorm_before."),
    (r"layer_norm_2\.", "layernorm_after."),
    (r"decode_head\.linear_c\.", "decode_head.linear_projections."),
]


def _zoo_key(key: str, target: Mapping[str, Any]) -> str | None:
    """The zoo state-dict key of a transformers SegFormer key, in either layout; None if it has none."""
    if key.startswith("segformer."):
        key = "backbone.model." + key[len("segformer."):]
    elif not key.startswith("decode_head."):
        key = "backbone.model." + key  # a bare SegformerModel file
    renamed = key
    for pattern, replacement in _RENAMES:
        renamed = re.sub(pattern, replacement, renamed)
    return next((k for k in (key, renamed) if k in target), None)


def _read_transformers_checkpoint(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor], model: nn.Module,
) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict of a file, a transformers ``save_pretrained`` folder or a dict, and
    its name for reports; refuses what is no transformers SegFormer state dict (another
    family's ViT file by name, see :mod:`segzoo.backbones.checkpoint_families`)."""
    if isinstance(checkpoint, Mapping):
        state, source = dict(checkpoint), "<state dict>"
    else:
        path = Path(checkpoint).expanduser()
        if path.is_dir():
            path = next((path / n for n in _WEIGHTS_NAMES if (path / n).is_file()), path)
            if path.is_dir():
                raise FileNotFoundError(
                    f"{str(path)!r} holds neither {' nor '.join(_WEIGHTS_NAMES)}: pass the weights file itself, "
                    "or the folder transformers' save_pretrained wrote"
                )
        state, source = read_checkpoint(path), str(path)  # corrupt or code-running files fail naming the file
    if detect_checkpoint_format(state) == "segzoo":
        raise CheckpointError(
            f"{source} is a whole segzoo model (segzoo.save_pretrained), not a transformers SegFormer checkpoint: "
            "load it with segzoo.create_model('<folder with config.json>') instead"
        )
    cfg = getattr(model, "pretrained_cfg", None) or {}
    # every MiT size has one architecture and layout: any MiT spec answers for a model built without a name
    spec = BACKBONES.get(cfg.get("backbone") or "") or next(s for s in BACKBONES.values() if s.kind == "mit")
    why = family_mismatch(checkpoint_signature(state), spec, model_name=model.model_name or cfg.get("architecture"))
    if why:
        raise CheckpointError(f"refusing {source}: {why}")
    non_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise CheckpointError(
            f"{source} does not look like transformers SegFormer weights: entries {key_list(non_tensors)} are not "
            "tensors; pass the state dict itself (e.g. checkpoint['state_dict'])"
        )
    return state, source
