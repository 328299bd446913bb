"""The zoo's heads as data, and the registry entries they make over every backbone spec.

A head row names its factory (in ``segzoo/heads/``), the backbone kinds it decodes, the
segmenter class its outputs need, and whether it predicts sets (a Hungarian loss) or pixels.
Every head goes over every backbone spec of a kind it takes, as ``{head}_{backbone}``: adding
a backbone is one spec (``segzoo/backbones/specs.py``), adding a head one head file and one
row here. Nothing here imports torch: the head's file is imported when a model is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ._registry import ModelEntry, register_entry
from .backbones.specs import BACKBONES, BackboneSpec

__all__ = ["HEADS", "HeadSpec", "list_heads"]


@dataclass(frozen=True)
class HeadSpec:
    """One decoder of the zoo.

    ``factory`` and ``segmenter`` are ``"module:name"`` paths, imported when a model is built.
    ``fixed`` are build options the head decides itself, each with why (users cannot set them).
    """

    name: str  # the name prefix: "segformer"
    title: str  # "SegFormer head"
    factory: str  # (in_channels, num_classes, **options) -> the head module
    backbone_kinds: tuple[str, ...] = ("vit",)
    set_prediction: bool = False  # (class, mask) pairs trained with a Hungarian loss, not per-pixel logits
    segmenter: str = "segzoo.models.segmenter:Segmenter"
    default_neck: str | None = None  # None: the backbone's
    fixed: tuple[tuple[str, Any, str], ...] = ()  # (option, value, why)
    summary: str = ""  # one phrase for model cards and docs

    def head_factory(self) -> Callable[..., Any]:
        return _load(self.factory)

    def segmenter_class(self) -> type:
        return _load(self.segmenter)


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


HEADS: tuple[HeadSpec, ...] = (
    HeadSpec("segformer", "SegFormer head", "segzoo.heads.segformer:create_segformer_head", ("vit", "mit"),
             summary="SegFormer's all-MLP decode head (Xie et al. 2021) fusing four feature maps"),
    HeadSpec("upernet", "UperNet head", "segzoo.heads.upernet:create_upernet_head",
             summary="UperNet's pyramid pooling and FPN (Xiao et al. 2018) over four feature maps"),
    HeadSpec("dpt", "DPT head", "segzoo.heads.dpt:create_dpt_head", default_neck="dpt",
             summary="DPT's reassemble and fusion blocks (Ranftl et al. 2021) over four ViT levels"),
    HeadSpec("mask2former", "Mask2Former head", "segzoo.heads.mask2former:create_mask2former_head",
             set_prediction=True, segmenter="segzoo.models.mask_classification:MaskClassificationSegmenter",
             summary="Mask2Former's masked-attention decoder (Cheng et al. 2022) predicting class-mask pairs"),
    HeadSpec("eomt", "EoMT", "segzoo.heads.eomt:create_eomt_head", set_prediction=True,
             segmenter="segzoo.models.eomt_segmenter:EomtSegmenter",
             fixed=(("neck", "none", "it reads the ViT's tokens directly"),
                    ("feature_indices", None, "it reads the last block, with the queries in the last num_blocks"),
                    ("keep_backbone_norm", True, "it reads the last block through the ViT's final norm")),
             summary="EoMT's mask queries (Kerssies et al. 2025) running through the ViT's last blocks, no decoder"),
)
def list_heads() -> list[HeadSpec]:
    """The zoo's heads, in the order the docs present them."""
    return list(HEADS)


def _entrypoint(name: str, head: HeadSpec, spec: BackboneSpec) -> Callable[..., Any]:
    def factory(pretrained: bool = False, **kwargs: Any) -> Any:
        from .models._builder import build_entry  # torch: only when a model is built

        return build_entry(_ENTRIES[name], pretrained=pretrained, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = __name__
    factory.__doc__ = f"{head.title} on {spec.title}."
    return factory


def _register_catalog() -> dict[str, ModelEntry]:
    entries = {}
    for head in HEADS:
        for spec in BACKBONES.values():
            if spec.kind not in head.backbone_kinds:
                continue
            name = f"{head.name}_{spec.name}"
            entry = ModelEntry(name, _entrypoint(name, head, spec), head.name, head=head, backbone=spec,
                               pretrained_cfgs={cfg.tag: cfg.for_model(name) for cfg in spec.weights})
            entries[name] = register_entry(entry)
    return entries


_ENTRIES = _register_catalog()
