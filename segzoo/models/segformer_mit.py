"""The original SegFormer (Mix Transformer encoder + all-MLP head) through transformers'
SegFormer modules: ``segformer_mit_b0`` ... ``segformer_mit_b5``.

For comparing the ViT-foundation SegFormers with the original. The encoder and the
decode head are transformers' ``SegformerModel`` and ``SegformerDecodeHead``; the zoo
wrapper adds the contract (any input size, ``in_chans``, ``pretrained_cfg``, logits at
the input size by bilinear upsampling). Published weights (nvidia/mit-b*, the
ADE20K- and Cityscapes-fine-tuned nvidia/segformer-b*) load with
:func:`load_transformers_segformer`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from timm.models import adapt_input_conv
from transformers.models.segformer.modeling_segformer import SegformerDecodeHead

from .._hub import hub_download
from .._pretrained import PretrainedCfg
from .._registry import get_pretrained_cfg, register_model, register_pretrained_cfgs
from .._validation import accepted_keywords, one_weights_source, positive_int, reject_unknown_keywords
from .._weights import CheckpointError, LoadReport, _names, _raise_on_problems, detect_checkpoint_format, read_checkpoint
from ..backbones.mit import MIT_CONFIGS, MiTBackbone, create_mit_backbone, mit_segformer_config
from ..necks import IdentityNeck
from ._builder import adapt_normalization
from .segmenter import Segmenter

__all__ = ["load_segformer_weights", "load_transformers_segformer"]  # register_model appends the factory names

CHECKPOINT_FORMAT = "transformers_segformer"
_LICENSE = "other: NVIDIA Source Code License for SegFormer (non-commercial), https://github.com/NVlabs/SegFormer"
_SOURCE = "SegFormer (Xie et al., NeurIPS 2021; https://github.com/NVlabs/SegFormer), transformers ports by NVIDIA"
_WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")  # what transformers' save_pretrained writes


def load_transformers_segformer(
    model: Segmenter,
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
    if not isinstance(getattr(model, "backbone", None), MiTBackbone):
        raise TypeError(f"expected a segformer_mit_* model, got {type(model).__name__}; build it with "
                        "segzoo.create_model('segformer_mit_b0', ...)")
    state, source = _read_transformers_checkpoint(checkpoint)
    report = _load_state(model, state, source, include_classifier)
    if verbose:
        print(report)
    return report


def _load_state(model: Segmenter, state: Mapping[str, torch.Tensor], source: str,
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
    _raise_on_problems(report, hint=_fit_hint(model, report))
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


def _fit_hint(model: Segmenter, report: LoadReport) -> str:
    hint = ("Check the MiT size: build the segformer_mit_b* model whose size matches the checkpoint "
            f"(this one is {model.model_name or 'not a registered size'})")
    if any(m.startswith("decode_head.classifier.") for m in report.mismatched):
        hint = ("For another number of classes, build the model with the checkpoint's num_classes or load with "
                f"include_classifier=False. {hint}")
    return hint


# -- pretrained variants (data) --------------------------------------------------------


def _mit_pretrained_cfgs(size: str) -> list[PretrainedCfg]:
    arch = f"segformer_mit_{size}"
    ade_res = 640 if size == "b5" else 512
    common = dict(architecture=arch, backbone=f"mit_{size}", hf_hub_filename="pytorch_model.bin",
                  checkpoint_format=CHECKPOINT_FORMAT, source=_SOURCE, license=_LICENSE, patch_size=4)
    return [
        PretrainedCfg("in1k", hf_hub_id=f"nvidia/mit-{size}", weights_scope="encoder",
                      notes="ImageNet-1k encoder; decode head fresh", **common),
        PretrainedCfg("ade20k", hf_hub_id=f"nvidia/segformer-{size}-finetuned-ade-{ade_res}-{ade_res}",
                      weights_scope="full", num_classes=150,
                      notes=f"full model fine-tuned on ADE20K at {ade_res}x{ade_res} (150 classes)", **common),
        PretrainedCfg("cityscapes", hf_hub_id=f"nvidia/segformer-{size}-finetuned-cityscapes-1024-1024",
                      weights_scope="full", num_classes=19,
                      notes="full model fine-tuned on Cityscapes at 1024x1024 (19 classes)", **common),
    ]


register_pretrained_cfgs(cfg for size in MIT_CONFIGS for cfg in _mit_pretrained_cfgs(size))


# -- builder ---------------------------------------------------------------------------


def _create_segformer_mit(
    variant: str,
    size: str,
    pretrained: bool = False,
    pretrained_tag: str | None = None,
    num_classes: int | None = None,
    in_chans: int = 3,
    neck: str = "none",
    decoder_hidden_size: int | None = None,
    dropout: float = 0.1,
    drop_path_rate: float = 0.1,
    backbone_kwargs: dict[str, Any] | None = None,
    freeze_backbone: bool = False,
    grad_checkpointing: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_format: str | None = None,
    **unknown: Any,
) -> Segmenter:
    """Options: ``decoder_hidden_size`` (default 256 for b0/b1, 768 for b2-b5),
    ``dropout`` (0.1), ``drop_path_rate`` (0.1), ``backbone_kwargs`` (any
    ``SegformerConfig`` encoder field, e.g. tiny test sizes), ``freeze_backbone``,
    ``grad_checkpointing``. ``num_classes`` defaults to the fine-tuned tag's (150 for
    ADE20K, 19 for Cityscapes). ``pretrained=True`` downloads the tag's transformers
    file from the Hub; ``checkpoint_path`` loads a local one (encoder-only or full); the
    final classifier loads only when ``num_classes`` matches the checkpoint's."""
    reject_unknown_keywords(variant, unknown, accepted_keywords(_create_segformer_mit, skip=("variant", "size",
                                                                                               "pretrained_tag")))
    tag_cfg = get_pretrained_cfg(f"{variant}.{pretrained_tag}" if pretrained_tag else variant)
    if num_classes is None and pretrained_tag:
        num_classes = tag_cfg.num_classes
    num_classes = positive_int("num_classes", num_classes, "the number of classes, background included")
    in_chans = positive_int("in_chans", in_chans, "1 for grey-scale (OCT, CT), 3 for RGB")
    if neck != "none":
        raise ValueError(f"{variant} has a hierarchical encoder (strides 4-32) and takes no neck; got neck={neck!r}")
    one_weights_source(pretrained, checkpoint_path)
    if checkpoint_format not in (None, CHECKPOINT_FORMAT):
        raise ValueError(f"{variant} loads transformers SegFormer checkpoints only; got checkpoint_format={checkpoint_format!r}")
    config = mit_segformer_config(size, num_classes, in_chans, drop_path_rate, decoder_hidden_size, dropout,
                                  backbone_kwargs)
    backbone = create_mit_backbone(config)
    head = SegformerDecodeHead(config)
    model = Segmenter(backbone, IdentityNeck(backbone.out_channels), head, num_classes,
                      pretrained_cfg=_model_pretrained_cfg(tag_cfg, in_chans))
    if pretrained or checkpoint_path is not None:
        load_segformer_weights(model, checkpoint_path)
    if freeze_backbone:
        model.freeze_backbone()
    if grad_checkpointing:
        model.set_grad_checkpointing()
    return model


def load_segformer_weights(model: Segmenter, checkpoint_path: str | os.PathLike | None = None,
                           verbose: bool = True) -> LoadReport:
    """What ``pretrained=True`` / ``checkpoint_path=`` do for a ``segformer_mit_*`` model, on one
    already built: the model's tag's transformers file from the Hub (or a local file) loads
    through :func:`load_transformers_segformer`; a fine-tuned classifier for another class
    count is left as initialised, and said so."""
    if checkpoint_path is None:
        cfg = model.pretrained_cfg
        checkpoint_path = hub_download(cfg["hf_hub_id"], cfg["hf_hub_filename"],
                                       what=f"{cfg['architecture']}.{cfg['tag']} weights")
    state, source = _read_transformers_checkpoint(checkpoint_path)
    # a fine-tuned file for other classes: keep everything but the final 1x1 classifier
    classifier = next((v for k, v in state.items() if k.endswith("decode_head.classifier.weight")), None)
    include_classifier = classifier is None or classifier.shape[0] == model.num_classes
    report = _load_state(model, state, source, include_classifier)
    if verbose:
        print(report if include_classifier else f"{report}; classifier re-initialised for {model.num_classes} classes")
    return report


def _model_pretrained_cfg(tag_cfg: PretrainedCfg, in_chans: int) -> dict[str, Any]:
    cfg = tag_cfg.to_dict()
    cfg.update(in_chans=in_chans, pad_multiple=1, min_input_size=MiTBackbone.min_input_size)
    return adapt_normalization(cfg, in_chans)


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
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict of a file, a transformers ``save_pretrained`` folder or a dict, and
    its name for reports; refuses what is no transformers SegFormer state dict."""
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
    non_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise CheckpointError(
            f"{source} does not look like transformers SegFormer weights: entries {_names(non_tensors)} are not "
            "tensors; pass the state dict itself (e.g. checkpoint['state_dict'])"
        )
    return state, source


# -- registered models -----------------------------------------------------------------


@register_model
def segformer_mit_b0(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """SegFormer-B0: MiT-b0 encoder (3.7M params) + all-MLP head, transformers' modules."""
    return _create_segformer_mit("segformer_mit_b0", "b0", pretrained, **kwargs)


@register_model
def segformer_mit_b1(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """SegFormer-B1: MiT-b1 encoder + all-MLP head, transformers' modules."""
    return _create_segformer_mit("segformer_mit_b1", "b1", pretrained, **kwargs)


@register_model
def segformer_mit_b2(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """SegFormer-B2: MiT-b2 encoder + all-MLP head, transformers' modules."""
    return _create_segformer_mit("segformer_mit_b2", "b2", pretrained, **kwargs)


@register_model
def segformer_mit_b3(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """SegFormer-B3: MiT-b3 encoder + all-MLP head, transformers' modules."""
    return _create_segformer_mit("segformer_mit_b3", "b3", pretrained, **kwargs)


@register_model
def segformer_mit_b4(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """SegFormer-B4: MiT-b4 encoder + all-MLP head, transformers' modules."""
    return _create_segformer_mit("segformer_mit_b4", "b4", pretrained, **kwargs)


@register_model
def segformer_mit_b5(pretrained: bool = False, **kwargs: Any) -> Segmenter:
    """SegFormer-B5: MiT-b5 encoder + all-MLP head, transformers' modules."""
    return _create_segformer_mit("segformer_mit_b5", "b5", pretrained, **kwargs)
