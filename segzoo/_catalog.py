"""The zoo's heads as data, and the registry entries they make over every backbone spec.

A head row names the model file that builds it, the backbone kinds it decodes, the
segmenter class its outputs need and whether it predicts sets (a Hungarian loss) or pixels.
Every head goes over every backbone spec of a kind it takes, as ``{head}_{backbone}``: adding
a backbone is one spec (``segzoo/backbones/specs.py``), adding a head one model file and one
row here. Nothing here imports torch: the model file is imported when a model is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ._registry import ModelEntry, register_entry
from .backbones.specs import BACKBONES, BackboneSpec

__all__ = ["HEADS", "HeadSpec", "get_head", "list_heads"]


@dataclass(frozen=True)
class HeadSpec:
    """One decoder of the zoo."""

    name: str  # the name prefix: "segformer"
    title: str  # "SegFormer all-MLP decode head"
    module: str  # the model file that builds it: a ``build(entry, pretrained, **kwargs)`` function
    backbone_kinds: tuple[str, ...] = ("vit",)
    set_prediction: bool = False  # (class, mask) pairs trained with a Hungarian loss, not per-pixel logits
    summary: str = ""  # one sentence for model cards and docs

    def builder(self) -> Callable[..., Any]:
        return importlib.import_module(self.module).build


HEADS: tuple[HeadSpec, ...] = (
    HeadSpec("segformer", "SegFormer head", "segzoo.models.segformer", ("vit", "mit"),
             summary="SegFormer's all-MLP decode head (Xie et al. 2021) fuses four feature maps"),
    HeadSpec("upernet", "UperNet head", "segzoo.models.upernet",
             summary="UperNet (pyramid pooling and an FPN, Xiao et al. 2018) decodes four feature maps"),
    HeadSpec("dpt", "DPT head", "segzoo.models.dpt",
             summary="DPT's reassemble and fusion blocks (Ranftl et al. 2021) decode four ViT levels"),
    HeadSpec("mask2former", "Mask2Former head", "segzoo.models.mask2former", set_prediction=True,
             summary="Mask2Former's masked-attention transformer decoder (Cheng et al. 2022) predicts class-mask pairs"),
    HeadSpec("eomt", "EoMT", "segzoo.models.eomt", set_prediction=True,
             summary="EoMT (Kerssies et al. 2025) runs mask queries through the ViT's last blocks, no decoder"),
)
_HEADS_BY_NAME = {head.name: head for head in HEADS}


def get_head(name: str) -> HeadSpec:
    if name not in _HEADS_BY_NAME:
        raise KeyError(f"Unknown head {name!r}; the zoo's heads: {', '.join(_HEADS_BY_NAME)}")
    return _HEADS_BY_NAME[name]


def list_heads() -> list[HeadSpec]:
    """The zoo's heads, in the order the docs present them."""
    return list(HEADS)


def _entrypoint(name: str, head: HeadSpec, spec: BackboneSpec) -> Callable[..., Any]:
    def factory(pretrained: bool = False, **kwargs: Any) -> Any:
        return head.builder()(_ENTRIES[name], pretrained=pretrained, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = head.module
    factory.__doc__ = f"{head.title} on {spec.title}."
    return factory


def _register_catalog() -> dict[str, ModelEntry]:
    entries = {}
    for head in HEADS:
        for spec in BACKBONES.values():
            if spec.kind not in head.backbone_kinds:
                continue
            name = f"{head.name}_{spec.name}"
            entry = ModelEntry(name, _entrypoint(name, head, spec), head.module.rsplit(".", 1)[-1], head=head,
                               backbone=spec, pretrained_cfgs={cfg.tag: cfg.for_model(name) for cfg in spec.weights})
            entries[name] = register_entry(entry)
    return entries


_ENTRIES = _register_catalog()
