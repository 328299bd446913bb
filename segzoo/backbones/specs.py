"""Backbone families as data: the encoder to build, its patch size and depth, its licence, and
where each family's published weights come from.

Adding a family or size is one :class:`BackboneSpec` in ``_BACKBONE_LIST``: the registry
puts every head whose ``backbone_kinds`` include the spec's ``kind`` over it
(``segzoo/_catalog.py``). This module imports neither torch nor timm, so listing the zoo is
instant; ``tests/test_registry.py`` checks the facts copied from timm's configs against timm.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field, replace
from typing import Any

from .._pretrained import IMAGENET_MEAN, IMAGENET_STD, PretrainedCfg
from .._validation import did_you_mean, positive_int

__all__ = ["BackboneSpec", "BACKBONES", "get_backbone_spec", "default_feature_indices", "published_weights_source"]

# kind -> the module that builds and loads it (a create_backbone function and the backbone class)
_KIND_MODULES = {"vit": "segzoo.backbones.vit", "mit": "segzoo.backbones.mit"}


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone family at one size.

    ``kind`` names the encoder implementation (``"vit"``: a timm ViT; ``"mit"``: transformers'
    Mix Transformer); what differs between kinds (weight loading, LoRA, padding, compile
    regions, export, layer groups) lives on the backbone class of that kind.
    ``build_kwargs`` are the encoder's constructor arguments that the family fixes (timm
    arguments for a ViT, ``SegformerConfig`` fields for MiT); ``head_kwargs`` the head options
    its published weights were trained with (MiT-b2..b5's 768-wide SegFormer head).
    """

    family: str
    size: str
    title: str  # "DINOv3 ViT-L/16"
    timm_arch: str | None  # the timm model (None: not a timm encoder)
    patch_size: int
    depth: int
    license: str
    license_name: str = ""
    license_link: str = ""
    source: str = ""
    weights: tuple[PretrainedCfg, ...] = ()  # first = default; completed once in BACKBONES
    kind: str = "vit"
    build_kwargs: dict = field(default_factory=dict)
    head_kwargs: dict = field(default_factory=dict)
    # the blocks scale their residual branches (timm's ``init_values``): DINOv2 and DINOv3 do
    layer_scale: bool = False
    # the file layouts this family's weights are published in, accepted when detected
    # (segzoo/_weights.py); a file in another family's layout is refused unless checkpoint_format= says so
    checkpoint_layouts: tuple[str, ...] = ("timm",)

    @property
    def name(self) -> str:
        return f"{self.family}_{self.size}"

    @property
    def timm_kwargs(self) -> dict:
        """The timm arguments this family fixes (ViT kinds)."""
        return self.build_kwargs if self.timm_arch else {}

    @property
    def feature_indices(self) -> list[int]:
        return default_feature_indices(self.depth)

    @property
    def default_weights(self) -> PretrainedCfg | None:
        return self.weights[0] if self.weights else None

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) of the default weights (ImageNet's for a family without any)."""
        return (self.weights[0].mean, self.weights[0].std) if self.weights else (IMAGENET_MEAN, IMAGENET_STD)

    def weights_for(self, tag: str | None) -> PretrainedCfg | None:
        """The weight set called ``tag`` (``None``: the default one); unknown tags raise naming the valid ones."""
        if not tag:
            return self.default_weights
        for cfg in self.weights:
            if cfg.tag == tag:
                return cfg
        tags = [w.tag for w in self.weights]
        raise ValueError(f"{self.name} has no weights tagged {tag!r}{did_you_mean(tag, tags, cutoff=0.5)}; "
                         f"its tags: {', '.join(tags) or 'none'}")

    def backbone_module(self) -> Any:
        """The module that builds this kind (imports torch and the encoder's library)."""
        return importlib.import_module(_KIND_MODULES[self.kind])

    @property
    def backbone_class(self) -> type:
        return self.backbone_module().BACKBONE_CLASS

    @property
    def supports_lora(self) -> bool:
        """Whether LoRA applies to this encoder (asked of its backbone class)."""
        return bool(self.backbone_class.supports_lora)


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
_MIT_SOURCE = "SegFormer (Xie et al., NeurIPS 2021; https://github.com/NVlabs/SegFormer), transformers ports by NVIDIA"
_MEDDINOV3_SOURCE = ("MedDINOv3 (Li et al. 2025, arXiv:2509.02379; https://github.com/ricklisz/MedDINOv3), "
                     "DINOv3 ViT-B/16 adapted to CT")
_RAD_DINO_SOURCE = ("RAD-DINO (Perez-Garcia et al., Nature Machine Intelligence 2025; "
                    "https://huggingface.co/microsoft/rad-dino), DINOv2 ViT-B/14 adapted to chest X-rays")
_DINOV3_LICENSE = dict(license="other", license_name="dinov3-license",
                       license_link="https://ai.meta.com/resources/models-and-libraries/dinov3-license/")
_MIT_LICENSE = dict(license="other", license_name="nvidia-segformer-license",
                    license_link="https://github.com/NVlabs/SegFormer/blob/master/LICENSE")
# the repository publishes no licence file; its README limits the weights to research use
_VISIONFM_LICENSE = dict(license="other", license_name="visionfm-research-use",
                         license_link="https://github.com/ABILab-CUHK/VisionFM")
# RAD-DINO's model card: research use only, under the Microsoft Research License Agreement
_RAD_DINO_LICENSE = dict(license="other", license_name="msrla",
                         license_link="https://huggingface.co/microsoft/rad-dino/blob/main/LICENSE")
_SIZE_TITLES = {"small": "S", "base": "B", "large": "L", "giant": "g"}
# timm's configs for its DINOv3 satellite copy (checked against timm in tests/test_registry.py)
_SAT493M_MEAN, _SAT493M_STD = (0.430, 0.411, 0.296), (0.213, 0.156, 0.143)


# MedDINOv3's demo clips CT to [-1000, 1000] HU and normalises with (HU - 65.11) / 178.02; on that window
# scaled to [0, 1] ((HU + 1000) / 2000) the same normalisation is mean 0.5326, std 0.0890
_CT_MEAN = ((65.1084213256836 + 1000) / 2000,) * 3
_CT_STD = (178.01663208007812 / 2000,) * 3
_CT_ADVICE = ("CT: clip to [-1000, 1000] HU and scale to [0, 1], then normalise with this mean/std (the published "
              "(HU - 65.11) / 178.02). One slice: in_chans=1 sums the RGB patch filters, the same as repeating the "
              "slice in three channels as the authors do")
# rad-dino's image processor (preprocessor_config.json): resize to 518, grey values in all three channels
_CXR_MEAN, _CXR_STD = (0.5307,) * 3, (0.2583,) * 3
_CXR_ADVICE = ("chest X-ray scaled to [0, 1], normalised with this mean/std, at 518 px as published. One channel: "
               "in_chans=1 sums the RGB patch filters, the same as repeating the image in three channels")


def _dinov3(size: str, depth: int) -> BackboneSpec:
    weights = [PretrainedCfg("lvd1689m", timm_tag="lvd1689m")]
    if size == "large":  # the satellite-imagery weights exist for ViT-L only
        weights.append(PretrainedCfg("sat493m", timm_tag="sat493m", mean=_SAT493M_MEAN, std=_SAT493M_STD))
    return BackboneSpec("dinov3", size, f"DINOv3 ViT-{_SIZE_TITLES[size]}/16", f"vit_{size}_patch16_dinov3", 16,
                        depth, source=_DINOV3_SOURCE, weights=tuple(weights), layer_scale=True,
                        checkpoint_layouts=("timm", "dinov3"), **_DINOV3_LICENSE)


def _dinov2(size: str, depth: int, registers: bool) -> BackboneSpec:
    family = "dinov2_reg4" if registers else "dinov2"
    arch = f"vit_{size}_patch14_reg4_dinov2" if registers else f"vit_{size}_patch14_dinov2"
    title = f"DINOv2 ViT-{_SIZE_TITLES[size]}/14{' with 4 registers' if registers else ''}"
    return BackboneSpec(family, size, title, arch, 14, depth, "apache-2.0", source=_DINOV2_SOURCE,
                        weights=(PretrainedCfg("lvd142m", timm_tag="lvd142m"),), layer_scale=True,
                        checkpoint_layouts=("timm", "dinov2", "transformers_dinov2"))


def _retfound_file(tag: str, repo: str, fmt: str, notes: str) -> PretrainedCfg:
    return PretrainedCfg(tag, hf_hub_id=f"YukunZhou/{repo}", hf_hub_filename=f"{repo}.pth", checkpoint_format=fmt,
                         gated=True, notes=notes)


def _mit(size: str, params: str, hidden_sizes: list[int], depths: list[int]) -> BackboneSpec:
    ade_res = 640 if size == "b5" else 512
    common = dict(hf_hub_filename="pytorch_model.bin", checkpoint_format="transformers_segformer")
    weights = (
        PretrainedCfg("in1k", hf_hub_id=f"nvidia/mit-{size}", weights_scope="encoder",
                      notes="ImageNet-1k encoder; decode head fresh", **common),
        PretrainedCfg("ade20k", hf_hub_id=f"nvidia/segformer-{size}-finetuned-ade-{ade_res}-{ade_res}",
                      weights_scope="full", num_classes=150,
                      notes=f"full model fine-tuned on ADE20K at {ade_res}x{ade_res} (150 classes)", **common),
        PretrainedCfg("cityscapes", hf_hub_id=f"nvidia/segformer-{size}-finetuned-cityscapes-1024-1024",
                      weights_scope="full", num_classes=19,
                      notes="full model fine-tuned on Cityscapes at 1024x1024 (19 classes)", **common),
    )
    # SegFormer-B0/B1 decode at width 256, B2-B5 at 768 (Xie et al. 2021, Table 6)
    head_kwargs = {"decoder_hidden_size": 256 if size in ("b0", "b1") else 768}
    return BackboneSpec("mit", size, f"MiT-{size} ({params}), SegFormer's hierarchical encoder", None, 4, 4,
                        source=_MIT_SOURCE, weights=weights, kind="mit", head_kwargs=head_kwargs,
                        checkpoint_layouts=("transformers_segformer",),
                        build_kwargs=dict(hidden_sizes=hidden_sizes, depths=depths), **_MIT_LICENSE)


_BACKBONE_LIST = [
    _dinov3("small", 12),
    _dinov3("base", 12),
    _dinov3("large", 24),
    *[_dinov2(size, depth, registers) for registers in (False, True)
      for size, depth in (("small", 12), ("base", 12), ("large", 24), ("giant", 40))],
    BackboneSpec(
        "retfound", "large", "RETFound ViT-L/16 (MAE)", "vit_large_patch16_224", 16, 24, "cc-by-nc-4.0",
        source=_RETFOUND_SOURCE,
        weights=(
            _retfound_file("cfp", "RETFound_mae_natureCFP", "retfound_mae", "MAE, colour fundus photographs"),
            _retfound_file("oct", "RETFound_mae_natureOCT", "retfound_mae", "MAE, OCT B-scans"),
            _retfound_file("meh", "RETFound_mae_meh", "retfound_mae", "MAE, Moorfields fundus"),
        ),
        checkpoint_layouts=("timm", "mae"),
    ),
    BackboneSpec(
        "retfound_dinov2", "large", "RETFound ViT-L/14 (DINOv2 objective)", "vit_large_patch14_dinov2", 14, 24,
        "cc-by-nc-4.0", source=_RETFOUND_SOURCE,
        weights=(
            _retfound_file("meh", "RETFound_dinov2_meh", "retfound_dinov2", "DINOv2, Moorfields fundus"),
            _retfound_file("shanghai", "RETFound_dinov2_shanghai", "retfound_dinov2", "DINOv2, Shanghai fundus"),
        ),
        # RETFound's DINOv2 weights were trained at 224 px: a 16x16 position grid
        build_kwargs={"img_size": 224},
        layer_scale=True,
        checkpoint_layouts=("timm", "dino_teacher"),
    ),
    BackboneSpec(
        "visionfm", "base", "VisionFM ViT-B/16 (ophthalmic modalities)", "vit_base_patch16_224", 16, 12,
        source=_VISIONFM_SOURCE,
        weights=tuple(
            PretrainedCfg(tag, source="https://github.com/ABILab-CUHK/VisionFM#pretrained-weights",
                          checkpoint_format="visionfm", notes=f"VisionFM {modality} encoder ({{'teacher': ...}} file)")
            for tag, modality in (("fundus", "fundus"), ("oct", "OCT"), ("ffa", "FFA"), ("slitlamp", "slit lamp"),
                                  ("external", "external eye"), ("ubm", "UBM"), ("ultrasound", "ultrasound"),
                                  ("mri", "MRI"))
        ),
        checkpoint_layouts=("timm", "dino_teacher"),
        **_VISIONFM_LICENSE,
    ),
    BackboneSpec(
        # the published model: DINOv3's ViT-B/16 with 4 storage tokens and LayerScale, built without a qkv
        # bias (vit_base(n_storage_tokens=4, qkv_bias=False, ...)), i.e. timm's distilled DINOv3 ViT-B
        "meddinov3", "base", "MedDINOv3 ViT-B/16 (CT)", "vit_base_patch16_dinov3", 16, 12, "apache-2.0",
        source=_MEDDINOV3_SOURCE,
        weights=(PretrainedCfg(
            "ct3m", hf_hub_id="ricklisz123/MedDINOv3-ViTB-16-CT-3M", hf_hub_filename="model.pth",
            checkpoint_format="meddinov3", mean=_CT_MEAN, std=_CT_STD, input_advice=_CT_ADVICE,
            notes="CT-3M (3.87M axial CT slices), DINOv3 objective ({'teacher': ...} training file)"),),
        layer_scale=True,
        checkpoint_layouts=("timm", "dino_teacher"),
    ),
    BackboneSpec(
        "rad_dino", "base", "RAD-DINO ViT-B/14 (chest X-ray)", "vit_base_patch14_dinov2", 14, 12,
        source=_RAD_DINO_SOURCE,
        weights=(PretrainedCfg(
            "cxr", hf_hub_id="microsoft/rad-dino", hf_hub_filename="model.safetensors",
            checkpoint_format="transformers_dinov2", mean=_CXR_MEAN, std=_CXR_STD, input_advice=_CXR_ADVICE,
            notes="chest X-rays, DINOv2 objective (transformers file); the repository's "
                  "backbone_compatible.safetensors (DINOv2 repository layout) loads through checkpoint_path too"),),
        layer_scale=True,
        checkpoint_layouts=("timm", "dinov2", "transformers_dinov2"),
        **_RAD_DINO_LICENSE,
    ),
    # the encoder of each size (Xie et al. 2021, Table 6); every other field is SegformerConfig's default
    # (heads 1/2/5/8, reduction ratios 8/4/2/1, patch sizes 7/3/3/3, strides 4/2/2/2)
    _mit("b0", "3.7M", [32, 64, 160, 256], [2, 2, 2, 2]),
    _mit("b1", "14M", [64, 128, 320, 512], [2, 2, 2, 2]),
    _mit("b2", "25M", [64, 128, 320, 512], [3, 4, 6, 3]),
    _mit("b3", "45M", [64, 128, 320, 512], [3, 4, 18, 3]),
    _mit("b4", "62M", [64, 128, 320, 512], [3, 8, 27, 3]),
    _mit("b5", "82M", [64, 128, 320, 512], [3, 6, 40, 3]),
]


def _complete_weights(spec: BackboneSpec) -> BackboneSpec:
    """Fill in what every weight set of a spec shares; timm's own copies live at ``timm/{arch}.{tag}``."""
    weights = []
    for cfg in spec.weights:
        hub_id = f"timm/{spec.timm_arch}.{cfg.timm_tag}" if cfg.timm_tag else cfg.hf_hub_id
        weights.append(replace(cfg, backbone=spec.name, timm_arch=spec.timm_arch, hf_hub_id=hub_id,
                               source=cfg.source or spec.source, license=spec.license, license_name=spec.license_name,
                               license_link=spec.license_link, patch_size=spec.patch_size))
    return replace(spec, weights=tuple(weights))


BACKBONES: dict[str, BackboneSpec] = {spec.name: _complete_weights(spec) for spec in _BACKBONE_LIST}


def get_backbone_spec(name: str) -> BackboneSpec:
    """Spec of ``"{family}_{size}"``, e.g. ``"dinov3_large"``."""
    if name not in BACKBONES:
        close = difflib.get_close_matches(name, list(BACKBONES), n=5, cutoff=0.3)
        raise KeyError(f"Unknown backbone {name!r}. Closest: {', '.join(close)}. All: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def published_weights_source(spec: BackboneSpec, tag: str | PretrainedCfg | None = None) -> PretrainedCfg:
    """The published weights of ``spec`` called ``tag`` (default: its first), if they can be downloaded."""
    source = tag if isinstance(tag, PretrainedCfg) else spec.weights_for(tag)
    if source is None:
        raise ValueError(f"{spec.name} has no published weights registered: pass checkpoint_path=... (a local file)")
    if source.hf_hub_id is None:
        raise ValueError(
            f"{spec.name} weights {source.tag!r} are not on the Hugging Face Hub; download them from "
            f"{source.source} and pass checkpoint_path=... (pretrained=False)"
        )
    return source
