"""Backbone families as data: which timm architecture, patch size, normalisation,
feature layers, and where each family's weights come from.

Adding a family or size takes a :class:`BackboneSpec` here *and* one explicit,
greppable ``@register_model`` factory per head in ``segzoo/models/`` (timm's style);
``tests/test_registry.py`` fails until every spec has every head (docs: "Adding a
backbone or a head").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import timm

from .._pretrained import IMAGENET_MEAN, IMAGENET_STD, PretrainedCfg
from .._validation import positive_int

__all__ = ["BackboneSpec", "BACKBONES", "get_backbone_spec", "default_feature_indices"]


@dataclass(frozen=True)
class BackboneSpec:
    family: str
    size: str
    timm_arch: str
    patch_size: int
    depth: int
    license: str
    source: str
    weights: tuple[PretrainedCfg, ...] = ()  # first = default; complete once in BACKBONES
    timm_kwargs: dict = field(default_factory=dict)
    # the blocks scale their residual branches (timm's ``init_values``): DINOv2 and DINOv3 do
    layer_scale: bool = False

    @property
    def name(self) -> str:
        return f"{self.family}_{self.size}"

    @property
    def feature_indices(self) -> list[int]:
        return default_feature_indices(self.depth)

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) of the default weights (ImageNet's for a family without any)."""
        return (self.weights[0].mean, self.weights[0].std) if self.weights else (IMAGENET_MEAN, IMAGENET_STD)


def default_feature_indices(depth: int) -> list[int]:
    """Four evenly spaced block indices ending at the last block.

    Gives [2, 5, 8, 11] for 12 blocks and [5, 11, 17, 23] for 24 (the compatibility
    choices), [9, 19, 29, 39] for 40. Shallow test models repeat indices (depth 2 ->
    [0, 0, 0, 1]); the backbone computes each block once.
    """
    depth = positive_int("backbone depth", depth)
    return [max(0, depth * (i + 1) // 4 - 1) for i in range(4)]


_DINOV3_SOURCE = "Meta AI DINOv3 (https://github.com/facebookresearch/dinov3); ungated copies on the Hub by timm"
_DINOV2_SOURCE = "Meta AI DINOv2 (https://github.com/facebookresearch/dinov2); copies on the Hub by timm"
_RETFOUND_SOURCE = "RETFound (Zhou et al., Nature 2023; https://github.com/rmaphoh/RETFound_MAE)"
_VISIONFM_SOURCE = "VisionFM (Qiu et al., NEJM AI 2024; https://github.com/ABILab-CUHK/VisionFM)"


def _dinov3(size: str, depth: int) -> BackboneSpec:
    weights = [PretrainedCfg("lvd1689m", timm_tag="lvd1689m")]
    if size == "large":  # the satellite-imagery weights exist for ViT-L only
        weights.append(PretrainedCfg("sat493m", timm_tag="sat493m"))
    return BackboneSpec(
        "dinov3", size, f"vit_{size}_patch16_dinov3", 16, depth, "dinov3-license", _DINOV3_SOURCE, tuple(weights),
        layer_scale=True,
    )


def _dinov2(size: str, depth: int, registers: bool) -> BackboneSpec:
    family = "dinov2_reg4" if registers else "dinov2"
    arch = f"vit_{size}_patch14_reg4_dinov2" if registers else f"vit_{size}_patch14_dinov2"
    return BackboneSpec(
        family, size, arch, 14, depth, "apache-2.0", _DINOV2_SOURCE, (PretrainedCfg("lvd142m", timm_tag="lvd142m"),),
        layer_scale=True,
    )


def _retfound_file(tag: str, repo: str, fmt: str, notes: str) -> PretrainedCfg:
    return PretrainedCfg(
        tag,
        hf_hub_id=f"YukunZhou/{repo}",
        hf_hub_filename=f"{repo}.pth",
        checkpoint_format=fmt,
        gated=True,
        notes=notes,
    )


_BACKBONE_LIST = [
    _dinov3("small", 12),
    _dinov3("base", 12),
    _dinov3("large", 24),
    *[_dinov2(size, depth, registers) for registers in (False, True)
      for size, depth in (("small", 12), ("base", 12), ("large", 24), ("giant", 40))],
    BackboneSpec(
        "retfound", "large", "vit_large_patch16_224", 16, 24, "cc-by-nc-4.0", _RETFOUND_SOURCE,
        (
            _retfound_file("cfp", "RETFound_mae_natureCFP", "retfound_mae", "MAE, colour fundus photographs"),
            _retfound_file("oct", "RETFound_mae_natureOCT", "retfound_mae", "MAE, OCT B-scans"),
            _retfound_file("meh", "RETFound_mae_meh", "retfound_mae", "MAE, Moorfields fundus"),
        ),
    ),
    BackboneSpec(
        "retfound_dinov2", "large", "vit_large_patch14_dinov2", 14, 24, "cc-by-nc-4.0", _RETFOUND_SOURCE,
        (
            _retfound_file("meh", "RETFound_dinov2_meh", "retfound_dinov2", "DINOv2, Moorfields fundus"),
            _retfound_file("shanghai", "RETFound_dinov2_shanghai", "retfound_dinov2", "DINOv2, Shanghai fundus"),
        ),
        # RETFound's DINOv2 weights were trained at 224 px: a 16x16 position grid
        timm_kwargs={"img_size": 224},
        layer_scale=True,
    ),
    BackboneSpec(
        "visionfm", "base", "vit_base_patch16_224", 16, 12,
        "see https://github.com/ABILab-CUHK/VisionFM (research use)", _VISIONFM_SOURCE,
        tuple(
            PretrainedCfg(tag, source="https://github.com/ABILab-CUHK/VisionFM#pretrained-weights",
                          checkpoint_format="visionfm", notes=f"VisionFM {modality} encoder ({{'teacher': ...}} file)")
            for tag, modality in (("fundus", "fundus"), ("oct", "OCT"), ("ffa", "FFA"), ("slitlamp", "slit lamp"),
                                  ("external", "external eye"), ("ubm", "UBM"), ("ultrasound", "ultrasound"),
                                  ("mri", "MRI"))
        ),
    ),
]



def _complete_weights(spec: BackboneSpec) -> BackboneSpec:
    """Fill in what every weight set of a spec shares, and what timm knows of its own copies."""
    weights = []
    for cfg in spec.weights:
        mean, std, hub_id = cfg.mean, cfg.std, cfg.hf_hub_id
        if cfg.timm_tag:  # timm's config is the authority for its own copies
            timm_cfg = timm.models.get_pretrained_cfg(f"{spec.timm_arch}.{cfg.timm_tag}")
            mean, std = tuple(timm_cfg.mean), tuple(timm_cfg.std)
            hub_id = timm_cfg.hf_hub_id or f"timm/{spec.timm_arch}.{cfg.timm_tag}"
        weights.append(replace(cfg, backbone=spec.name, timm_arch=spec.timm_arch, hf_hub_id=hub_id, mean=mean, std=std,
                               source=cfg.source or spec.source, license=spec.license, patch_size=spec.patch_size))
    return replace(spec, weights=tuple(weights))


BACKBONES: dict[str, BackboneSpec] = {spec.name: _complete_weights(spec) for spec in _BACKBONE_LIST}


def get_backbone_spec(name: str) -> BackboneSpec:
    """Spec of ``"{family}_{size}"``, e.g. ``"dinov3_large"``."""
    if name not in BACKBONES:
        import difflib

        close = difflib.get_close_matches(name, list(BACKBONES), n=5, cutoff=0.3)
        raise KeyError(f"Unknown backbone {name!r}. Closest: {', '.join(close)}. All: {', '.join(BACKBONES)}")
    return BACKBONES[name]
