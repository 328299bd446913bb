"""Test-size settings of the zoo's real models, in one place (the same timm / transformers
classes as the published models, a few blocks and a few channels wide).

Every block of a tiny model must matter, or parity checks cannot see what the blocks compute:
the published DINOv2/DINOv3 LayerScale starts at 1e-5, which makes a fresh block nearly the
identity, so tiny models of those families start it at 1.0. Four blocks give the four feature
maps four different depths (``default_feature_indices(4) == [0, 1, 2, 3]``).
``tests/test_tiny_models.py`` proves both for every backbone family.
"""

from __future__ import annotations

from segzoo.backbones import BACKBONES

# backbone_kwargs of a ViT family without LayerScale (RETFound's MAE ViT, VisionFM)
TINY_VIT_PLAIN = dict(depth=4, embed_dim=64, num_heads=2)
# backbone_kwargs of a family with LayerScale (DINOv2, DINOv3, RETFound-DINOv2): most tests use these
TINY_VIT = dict(TINY_VIT_PLAIN, init_values=1.0)
TINY_WIDTH = 32  # decoder_hidden_size of any head (Mask2Former's GroupNorms need a multiple of 32)
TINY = dict(backbone_kwargs=TINY_VIT, decoder_hidden_size=TINY_WIDTH)
TINY_MIT = dict(backbone_kwargs=dict(hidden_sizes=[16, 32, 32, 64], depths=[1, 1, 1, 1],
                                     num_attention_heads=[1, 1, 1, 2]), decoder_hidden_size=TINY_WIDTH)
TINY_MASK2FORMER = dict(num_queries=8, decoder_layers=3, encoder_layers=1, num_attention_heads=2,
                        dim_feedforward=64, encoder_feedforward_dim=64)
# EoMT reads no decoder width: a 4-block ViT whose last 2 blocks see 8 queries
TINY_EOMT = dict(backbone_kwargs=TINY_VIT, num_queries=8, num_blocks=2, train_num_points=256)


def backbone_of(model_name: str) -> str:
    """The backbone spec a zoo model name ends with (the longest match: ``..._retfound_dinov2_large``
    also ends with ``dinov2_large``)."""
    base = model_name.split(".", 1)[0]
    matches = [name for name in BACKBONES if base.endswith("_" + name) or base == name]
    if not matches:
        raise KeyError(f"no backbone spec in model name {model_name!r}")
    return max(matches, key=len)


def tiny_vit(model_name: str) -> dict:
    """Tiny backbone_kwargs for ``model_name``'s ViT family (LayerScale at 1.0 where it has LayerScale)."""
    spec = BACKBONES[backbone_of(model_name)]
    kwargs = dict(TINY_VIT if spec.layer_scale else TINY_VIT_PLAIN)
    if spec.size == "giant":  # its SwiGLU MLP needs an even int(embed_dim * mlp_ratio)
        kwargs["embed_dim"] = 96
    return kwargs


def tiny_kwargs(model_name: str) -> dict:
    """Tiny create_model kwargs (backbone and decoder width) for any ViT zoo model."""
    return dict(backbone_kwargs=tiny_vit(model_name), decoder_hidden_size=TINY_WIDTH)


def segformer_reference_config(model):
    """transformers' SegformerConfig of a segformer_mit_* model: its encoder's config with its head's
    width, dropout and classes, for a SegformerForSemanticSegmentation reference."""
    from transformers import SegformerConfig

    head = model.decode_head.config
    fields = {**model.backbone.model.config.to_dict(), "num_labels": model.num_classes,
              "decoder_hidden_size": head.decoder_hidden_size, "classifier_dropout_prob": head.classifier_dropout_prob}
    return SegformerConfig(**fields)
