"""A plain ViT from timm as a feature extractor: four NCHW maps from chosen blocks."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Sequence

import timm
import torch
from timm.models._manipulate import checkpoint
from timm.models import model_entrypoint as timm_model_entrypoint
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .._validation import did_you_mean
from .._weights import LoadReport, load_backbone_checkpoint
from .specs import BackboneSpec, default_feature_indices

__all__ = ["BACKBONE_CLASS", "ViTBackbone", "check_backbone_kwargs", "create_backbone"]

# timm ViT arguments that create_backbone sets itself, and the create_model keyword that sets each
_SET_BY_CREATE_MODEL = {"in_chans": "in_chans", "num_classes": "num_classes", "drop_path_rate": "drop_path_rate",
                        "dynamic_img_size": "img_size"}


class ViTBackbone(nn.Module):
    """Wraps a timm ViT (``VisionTransformer`` or ``Eva``) built with ``dynamic_img_size``.

    ``forward`` returns one ``(B, embed_dim, H/p, W/p)`` map per entry of
    ``feature_indices`` through timm's ``forward_intermediates``; ``H`` and ``W`` must
    be multiples of the patch size (the :class:`~segzoo.Segmenter` pads for that).

    ``keep_norm`` keeps timm's final norm (EoMT reads the last block's tokens through it);
    :meth:`embed_tokens` and :meth:`run_block` are the two halves of ``forward_intermediates``
    for a decoder that runs the blocks itself.
    """

    # what differs between backbone kinds, asked by the segmenter, LoRA, export and the builder
    supports_lora = True  # peft adapts timm's attention and MLP linears
    lora_refusal = ""
    dynamic_export = False  # position embeddings are resampled for one size when exporting
    default_neck = "pyramid"  # four same-stride maps need a neck to become a pyramid
    neck_choices: tuple[str, ...] | None = None  # any neck

    def __init__(self, model: nn.Module, feature_indices: Sequence[int], spec: BackboneSpec | None = None,
                 keep_norm: bool = False):
        super().__init__()
        self.model = model
        self.spec = spec
        depth = len(model.blocks)
        bad = [i for i in feature_indices if not 0 <= i < depth]
        if bad or len(feature_indices) == 0:
            raise ValueError(f"feature_indices {list(feature_indices)} must lie in [0, {depth - 1}] for a {depth}-block ViT")
        self.feature_indices = list(feature_indices)
        # forward_intermediates returns each requested block once; duplicates (shallow test models) are re-mapped
        self._unique_indices = sorted(set(self.feature_indices))
        self._gather = [self._unique_indices.index(i) for i in self.feature_indices]
        patch = model.patch_embed.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        self.embed_dim = int(model.embed_dim)
        self.in_chans = int(model.patch_embed.proj.in_channels)
        self.out_channels = [self.embed_dim] * len(self.feature_indices)
        # depth before pruning: checkpoint blocks in [depth, source_depth) are unused on purpose
        self.source_depth = depth
        self.keep_norm = bool(keep_norm)
        self._drop_unused_parameters()

    @property
    def depth(self) -> int:
        return len(self.model.blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.model.forward_intermediates(
            x, indices=self._unique_indices, intermediates_only=True, output_fmt="NCHW"
        )
        return [features[i] for i in self._gather]

    @property
    def num_prefix_tokens(self) -> int:
        """Class and register tokens in front of the patch tokens."""
        return int(self.model.num_prefix_tokens)

    def embed_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(tokens, rope)``: what timm's ``forward_intermediates`` feeds its first block.

        ``tokens`` is ``(B, num_prefix_tokens + h * w, embed_dim)`` (prefix tokens first);
        ``rope`` is the rotary table of RoPE models (DINOv3), applied by timm's attention to
        the tokens after the prefix, else ``None``.
        """
        model = self.model
        tokens = model.patch_embed(x)
        if isinstance(model, Eva):  # Eva's _pos_embed applies patch dropout and returns the RoPE table
            tokens, rope = model._pos_embed(tokens)
        else:
            tokens, rope = model.patch_drop(model._pos_embed(tokens)), None
        return model.norm_pre(tokens), rope

    def run_block(self, index: int, tokens: torch.Tensor, rope: torch.Tensor | None = None,
                  attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """timm's block ``index`` on ``tokens`` (with gradient checkpointing when it is on).
        ``attn_mask`` goes to timm's attention as given (boolean or additive)."""
        block = self.model.blocks[index]
        kwargs: dict[str, Any] = {"attn_mask": attn_mask}
        if rope is not None:
            kwargs["rope"] = rope
        if self.model.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(block, tokens, **kwargs)
        return block(tokens, **kwargs)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def build_facts(self) -> dict[str, Any]:
        """What this build settled, recorded in ``model.pretrained_cfg``."""
        return dict(timm_arch=self.spec.timm_arch if self.spec else None, patch_size=self.patch_size,
                    feature_indices=list(self.feature_indices), in_chans=self.in_chans)

    def load_checkpoint(self, model: nn.Module, checkpoint: str | Path, checkpoint_format: str | None = None,
                        verbose: bool = True) -> LoadReport:
        """Load a published backbone file into this backbone (``model``, the segmenter, is only asked its name)."""
        return load_backbone_checkpoint(self, checkpoint, checkpoint_format=checkpoint_format, verbose=verbose,
                                        model_name=model_name_of(model))

    def repeated_blocks(self) -> list[nn.Module]:
        """The transformer blocks, one compiled graph serves them all (see :mod:`segzoo.compilation`)."""
        return list(self.model.blocks)

    def _drop_unused_parameters(self) -> None:
        """Remove parameters no segmentation forward uses (blocks past the last feature
        layer, the final norm and classifier), so DDP needs no ``find_unused_parameters``
        and frozen/trainable counts are honest."""
        last = max(self.feature_indices)
        # timm's own pruning: drops later blocks, final norm (unless kept) and head
        self.model.prune_intermediate_layers(indices=self._unique_indices, prune_norm=not self.keep_norm,
                                             prune_head=True)
        assert len(self.model.blocks) == last + 1

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer groups on this module's parameter names: ``stem`` (what feeds the first
        block: patch embedding, tokens, position embeddings, RoPE), then one group per block
        (LoRA adapters inside a block match with it). A kept final norm is left unmatched, so it
        joins whatever comes after the blocks. ``coarse`` changes nothing: a block already is
        the coarse unit, as in timm's ViTs."""
        return dict(
            stem=r"^model\.(?:patch_embed|pos_embed|cls_token|reg_token|mask_token|dist_token|rope)(?:\.|$)",
            blocks=[(r"^model\.blocks\.(\d+)\.", None)],
        )

    def no_weight_decay(self) -> set[str]:
        """Position embeddings and tokens that exist as parameters, on this module's names:
        timm's own list, plus the register and mask tokens it leaves out."""
        names = set(self.model.no_weight_decay()) | {"reg_token", "mask_token"}
        params = dict(self.model.named_parameters())
        return {f"model.{name}" for name in names if name in params}


def create_backbone(
    spec: BackboneSpec,
    in_chans: int = 3,
    feature_indices: Sequence[int] | None = None,
    drop_path_rate: float | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    img_size: tuple[int, int] | None = None,
    keep_norm: bool = False,
) -> ViTBackbone:
    """Build the timm ViT of ``spec`` and wrap (and prune) it; weights load afterwards
    (:meth:`ViTBackbone.load_checkpoint`), so the unused final norm and late blocks are never
    materialised twice.

    ``backbone_kwargs`` go to :func:`timm.create_model` (e.g. ``depth=2, embed_dim=64,
    num_heads=2`` for a tiny test model). ``img_size`` fixes the input size (a multiple of
    the patch size): position embeddings are resampled once at build time instead of at
    every call, which is what ``torch.compile`` needs; ``None`` keeps timm's
    ``dynamic_img_size``. ``keep_norm`` keeps (and loads) the ViT's final norm.
    """
    check_backbone_kwargs(spec, backbone_kwargs)
    if not spec.layer_scale and "init_values" in (backbone_kwargs or {}):
        # timm would add LayerScale parameters that no checkpoint of this family has
        raise ValueError(
            f"{spec.name}'s ViT ({spec.timm_arch}) has no LayerScale, so backbone_kwargs init_values="
            f"{backbone_kwargs['init_values']!r} would change its architecture; remove init_values"
        )
    kwargs: dict[str, Any] = dict(spec.timm_kwargs)
    kwargs.update(backbone_kwargs or {})
    depth = int(kwargs.get("depth", spec.depth))
    indices = list(feature_indices) if feature_indices is not None else (
        spec.feature_indices if depth == spec.depth else default_feature_indices(depth)
    )
    if img_size is not None:
        kwargs["img_size"] = tuple(img_size)
    try:
        model = timm.create_model(
            spec.timm_arch,
            pretrained=False,
            num_classes=0,
            in_chans=in_chans,
            dynamic_img_size=img_size is None,
            drop_path_rate=drop_path_rate or 0.0,
            **kwargs,
        )
    except AssertionError as err:  # timm checks shapes with bare asserts
        raise ValueError(
            f"timm cannot build {spec.timm_arch} with backbone_kwargs={backbone_kwargs} "
            f"({type(err).__name__}{': ' + str(err) if str(err) else ''}). The giant models' SwiGLU MLP needs "
            "int(embed_dim * mlp_ratio) to be even (e.g. embed_dim=96, num_heads=2); embed_dim must be "
            "divisible by num_heads"
        ) from err
    return ViTBackbone(model, indices, spec, keep_norm=keep_norm)


def model_name_of(model: nn.Module) -> str | None:
    """The zoo name of a segmenter, also while ``create_model`` is still building it (its weights record)."""
    name = getattr(model, "model_name", None)
    return name or (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or None


def check_backbone_kwargs(spec: BackboneSpec, backbone_kwargs: dict[str, Any] | None) -> None:
    """Refuse a ``backbone_kwargs`` key that the timm class of ``spec`` does not take, naming the
    closest argument and all accepted ones, before anything is built (timm's own error is a bare
    ``TypeError`` from ``Eva.__init__`` / ``VisionTransformer.__init__``, raised after the lookups)."""
    if not backbone_kwargs:
        return
    accepted = _timm_arguments(spec.timm_arch)
    for key in backbone_kwargs:
        if key in _SET_BY_CREATE_MODEL:
            raise ValueError(f"backbone_kwargs[{key!r}] is set by create_model: pass {_SET_BY_CREATE_MODEL[key]}=... "
                             "to create_model instead")
        if accepted is not None and key not in accepted:
            raise TypeError(
                f"backbone_kwargs[{key!r}] is not an argument of {spec.name}'s timm ViT "
                f"({_timm_class(spec.timm_arch).__name__}, {spec.timm_arch}){did_you_mean(key, accepted)}; "
                f"it accepts: {', '.join(accepted)}"
            )


def _timm_class(timm_arch: str) -> type[nn.Module] | None:
    """The timm model class behind ``timm_arch`` (its entry point's module: eva -> Eva, else VisionTransformer)."""
    module = timm_model_entrypoint(timm_arch).__module__
    return {"timm.models.eva": Eva, "timm.models.vision_transformer": VisionTransformer}.get(module)


def _timm_arguments(timm_arch: str) -> list[str] | None:
    """The keyword arguments of the timm class's ``__init__`` that users may set (None: unknown class)."""
    cls = _timm_class(timm_arch)
    if cls is None:
        return None
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None  # takes anything: leave the check to timm
    return [p.name for p in params if p.name != "self" and p.name not in _SET_BY_CREATE_MODEL]


BACKBONE_CLASS = ViTBackbone
