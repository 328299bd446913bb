"""What a checkpoint file is, from its keys, and whether it fits a backbone family.

A file has a *layout* (how its keys are named and wrapped: timm's, Meta's originals, an MAE or
DINO training container, transformers') and an *architecture* (what the tensors build: a DINOv3
ViT with RoPE and storage tokens, a DINOv2 ViT with LayerScale and a position table, a plain
ViT, SegFormer's MiT). Each :class:`~segzoo.backbones.BackboneSpec` names the architecture it
builds and the layouts its weights are published in (``checkpoint_layouts``). A file of
another architecture or patch size never loads; a file of the right architecture in another
family's layout (Meta's DINOv2 file given to RETFound-DINOv2, MedDINOv3's teacher file given
to DINOv3) is refused unless ``checkpoint_format=`` says it is meant. Files of one architecture
in timm's layout carry nothing that names their family: they load into every family of that
architecture (a plain ViT/16 into RETFound and VisionFM alike, sizes permitting).

Pure functions over key names and shapes; the loaders (``segzoo/_weights.py``,
``segzoo/backbones/mit_weights.py``) raise the refusal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from .specs import BACKBONES, BackboneSpec

__all__ = ["FileSignature", "family_mismatch", "file_signature", "spec_architecture"]

LAYOUT_TEXT = {
    "timm": "timm's layout",
    "dinov2": "Meta's original DINOv2 layout (mask_token, ls1.gamma)",
    "dinov3": "Meta's original DINOv3 layout (storage_tokens, rope_embed.periods)",
    "mae": "an MAE pre-training file ({'model': ...} with decoder_* keys, as RETFound publishes)",
    "dino_teacher": "a DINO training file ({'teacher': ...} with backbone.* keys, as VisionFM, RETFound-DINOv2 "
                    "and MedDINOv3 publish)",
    "transformers_dinov2": "transformers' Dinov2Model layout (embeddings.*, encoder.layer.N.*)",
    "transformers_segformer": "transformers' SegFormer layout (encoder.block.*, decode_head.*)",
}
ARCH_TEXT = {
    "dinov3": "DINOv3 ViT (RoPE, storage tokens, LayerScale, no position table)",
    "dinov2": "DINOv2 ViT (position table, LayerScale, no registers)",
    "dinov2_reg4": "DINOv2 ViT with registers (position table, LayerScale, register tokens)",
    "vit": "plain ViT (position table, no LayerScale)",
    "mit": "MiT encoder (SegFormer's hierarchical transformer)",
}
_SIZES = {384: "small", 768: "base", 1024: "large", 1536: "giant"}  # ViT widths of the zoo's sizes
_MIT_KEY = re.compile(r"(^|\.)(patch_embeddings|block|stages|layer_norm)\.\d+\.")


@dataclass(frozen=True)
class FileSignature:
    """A checkpoint's layout and architecture as its keys show them (``arch`` ``"unknown"``: no
    known signature; the loader's key-by-key checks decide)."""

    layout: str
    arch: str
    patch_size: int | None = None
    embed_dim: int | None = None

    def describe(self) -> str:
        if self.arch == "unknown":
            return f"no known architecture in {LAYOUT_TEXT.get(self.layout, self.layout)}"
        patch = f" with patch {self.patch_size}" if self.patch_size else ""
        width = f", width {self.embed_dim}" if self.embed_dim else ""
        return f"a {ARCH_TEXT[self.arch]}{patch}{width} in {LAYOUT_TEXT.get(self.layout, self.layout)}"


def file_signature(layout: str, encoder_state: Mapping[str, Any]) -> FileSignature:
    """The signature of ``encoder_state``: the file's tensors with containers and training prefixes
    removed (``{'model': ...}``, ``{'teacher': ...}``, ``backbone.``, ``module.``), keys as in the file."""
    keys = set(encoder_state)
    if layout == "transformers_dinov2":
        prefix = "dinov2." if any(k.startswith("dinov2.") for k in keys) else ""
        patch = _shape(encoder_state, f"{prefix}embeddings.patch_embeddings.projection.weight")
        cls = _shape(encoder_state, f"{prefix}embeddings.cls_token")
        arch = "dinov2_reg4" if f"{prefix}embeddings.register_tokens" in keys else "dinov2"
        return FileSignature(layout, arch, patch[-1] if patch else None, cls[-1] if cls else None)
    if layout == "transformers_segformer" or _is_mit(keys):
        return FileSignature("transformers_segformer", "mit")
    patch = _shape(encoder_state, "patch_embed.proj.weight")
    cls = _shape(encoder_state, "cls_token")
    patch_size, width = (patch[-1] if patch else None), (cls[-1] if cls else None)
    layer_scale = any(k.endswith(("ls1.gamma", "gamma_1")) for k in keys)
    if "storage_tokens" in keys or any(k.startswith("rope_embed.") for k in keys):
        arch = "dinov3"
    elif patch is None:
        arch = "unknown"
    elif "pos_embed" not in keys:  # timm's DINOv3 (Eva) keeps no position table
        arch = "dinov3" if layer_scale else "unknown"
    elif not layer_scale:
        arch = "vit"
    else:
        arch = "dinov2_reg4" if {"reg_token", "register_tokens"} & keys else "dinov2"
    return FileSignature(layout, arch, patch_size, width)


def spec_architecture(spec: BackboneSpec) -> str:
    """The architecture a backbone spec builds (one of :data:`ARCH_TEXT`)."""
    if spec.kind == "mit":
        return "mit"
    arch = spec.timm_arch or ""
    if "dinov3" in arch:
        return "dinov3"
    if "_reg" in arch:
        return "dinov2_reg4"
    return "dinov2" if spec.layer_scale else "vit"


def family_mismatch(signature: FileSignature, spec: BackboneSpec, patch_size: int | None = None,
                    format_given: bool = False, model_name: str | None = None) -> str | None:
    """Why a file of ``signature`` must not load into a ``spec`` backbone (``None``: it may).

    ``patch_size``: the built backbone's; ``format_given``: the caller passed ``checkpoint_format``,
    which accepts another family's layout of the same architecture (never another architecture).
    """
    if signature.arch == "unknown":
        return None
    want = spec_architecture(spec)
    arch_ok = signature.arch == want
    patch_ok = not (patch_size and signature.patch_size and signature.patch_size != patch_size)
    layout_ok = format_given or signature.layout in spec.checkpoint_layouts
    if arch_ok and patch_ok and layout_ok:
        return None
    patch = f" with patch {patch_size}" if patch_size else ""
    layouts = " or ".join(LAYOUT_TEXT[layout].split(" (")[0] for layout in spec.checkpoint_layouts)
    expects = f"a {ARCH_TEXT[want]}{patch} in {layouts}"
    message = f"it looks like {signature.describe()}, but {model_name or spec.name} ({spec.title}) expects {expects}."
    fits = _families_taking(signature)
    if fits:
        message += f" This file is for {_model_names(fits, signature, spec, model_name)}"
    else:
        message += " No zoo backbone takes this file"
    if arch_ok and patch_ok:  # only the layout differs: the same tensors, another family's release
        message += f"; to load it into {spec.name} anyway, pass checkpoint_format={signature.layout!r}"
    return message + "."


def _families_taking(signature: FileSignature) -> list[BackboneSpec]:
    return [spec for spec in BACKBONES.values()
            if spec_architecture(spec) == signature.arch and signature.layout in spec.checkpoint_layouts
            and (signature.patch_size is None or spec.kind == "mit" or spec.patch_size == signature.patch_size)]


def _model_names(fits: list[BackboneSpec], signature: FileSignature, spec: BackboneSpec,
                 model_name: str | None) -> str:
    """``segformer_dinov2_base``-style names: the caller's head over each fitting family, at the
    file's size where its width names one (``_<size>`` otherwise)."""
    base = (model_name or "").split(".", 1)[0]
    head = base[: -len(spec.name)] if base.endswith(spec.name) else ""
    if fits[0].kind != spec.kind:  # another encoder kind: SegFormer's head is over every kind
        head = "segformer_"
    names = []
    for family in dict.fromkeys(s.family for s in fits):
        sizes = [s.size for s in fits if s.family == family]
        size = _SIZES.get(signature.embed_dim or 0)
        if size not in sizes:
            size = sizes[0] if len(sizes) == 1 else "<" + "|".join(sizes) + ">"
        names.append(f"{head}{family}_{size}")
    return ", ".join(names)


def _shape(state: Mapping[str, Any], key: str) -> tuple[int, ...] | None:
    value = state.get(key)
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None and len(shape) else None


def _is_mit(keys: set[str]) -> bool:
    """transformers SegFormer keys (``encoder.block.0.0.``, ``patch_embeddings.0.``, or transformers 5's
    ``stages.0.``), in a file without a ViT patch embedding."""
    return "patch_embed.proj.weight" not in keys and any(_MIT_KEY.search(k) for k in keys)
