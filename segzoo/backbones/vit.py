"""A plain ViT from timm as a feature extractor: four NCHW maps from chosen blocks."""

from __future__ import annotations

from typing import Any, Sequence

import timm
import torch
from torch import nn

from .specs import BackboneSpec, default_feature_indices

__all__ = ["ViTBackbone", "create_vit_backbone"]


class ViTBackbone(nn.Module):
    """Wraps a timm ViT (``VisionTransformer`` or ``Eva``) built with ``dynamic_img_size``.

    ``forward`` returns one ``(B, embed_dim, H/p, W/p)`` map per entry of
    ``feature_indices`` through timm's ``forward_intermediates``; ``H`` and ``W`` must
    be multiples of the patch size (the :class:`~segzoo.Segmenter` pads for that).
    """

    def __init__(self, model: nn.Module, feature_indices: Sequence[int], spec: BackboneSpec | None = None):
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
        self._drop_unused_parameters()

    @property
    def depth(self) -> int:
        return len(self.model.blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.model.forward_intermediates(
            x, indices=self._unique_indices, intermediates_only=True, output_fmt="NCHW"
        )
        return [features[i] for i in self._gather]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def _drop_unused_parameters(self) -> None:
        """Remove parameters no segmentation forward uses (blocks past the last feature
        layer, the final norm and classifier), so DDP needs no ``find_unused_parameters``
        and frozen/trainable counts are honest."""
        last = max(self.feature_indices)
        # timm's own pruning: drops later blocks, final norm and head
        self.model.prune_intermediate_layers(indices=self._unique_indices, prune_norm=True, prune_head=True)
        assert len(self.model.blocks) == last + 1


def create_vit_backbone(
    spec: BackboneSpec,
    pretrained: bool = False,
    pretrained_tag: str | None = None,
    in_chans: int = 3,
    feature_indices: Sequence[int] | None = None,
    drop_path_rate: float = 0.0,
    backbone_kwargs: dict[str, Any] | None = None,
    img_size: tuple[int, int] | None = None,
) -> ViTBackbone:
    """Build the timm ViT of ``spec`` and wrap it.

    ``backbone_kwargs`` go to :func:`timm.create_model` (e.g. ``depth=2, embed_dim=64,
    num_heads=2`` for a tiny test model). ``pretrained`` uses timm's Hub download of
    the tag's timm-hosted weights; other sources load through ``checkpoint_path``.
    ``img_size`` fixes the input size (a multiple of the patch size): position
    embeddings are resampled once at build time instead of at every call, which is
    what ``torch.compile`` needs; ``None`` keeps timm's ``dynamic_img_size``.
    """
    kwargs: dict[str, Any] = dict(spec.timm_kwargs)
    kwargs.update(backbone_kwargs or {})
    depth = int(kwargs.get("depth", spec.depth))
    indices = list(feature_indices) if feature_indices is not None else (
        spec.feature_indices if depth == spec.depth else default_feature_indices(depth)
    )
    timm_name = spec.timm_arch
    if pretrained:
        source = next((w for w in spec.weights if w.tag == pretrained_tag), None) if pretrained_tag else spec.weights[0]
        if source is None or source.timm_tag is None:
            raise ValueError(
                f"{spec.name} weights {pretrained_tag!r} are not hosted by timm; download them from "
                f"{(source.hf_hub_id or source.url) if source else spec.source} and pass checkpoint_path=..."
            )
        timm_name = f"{spec.timm_arch}.{source.timm_tag}"
    if img_size is not None:
        kwargs["img_size"] = tuple(img_size)
    model = timm.create_model(
        timm_name,
        pretrained=pretrained,
        num_classes=0,
        in_chans=in_chans,
        dynamic_img_size=img_size is None,
        drop_path_rate=drop_path_rate,
        **kwargs,
    )
    return ViTBackbone(model, indices, spec)
