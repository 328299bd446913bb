import pytest
import torch

import segzoo
from segzoo.backbones import BACKBONES, default_feature_indices

FAMILY_SIZES = {
    "dinov3": ["small", "base", "large"],
    "dinov2": ["small", "base", "large", "giant"],
    "retfound": ["large"],
    "visionfm": ["base"],
}


def test_list_models_sorted_and_filtered():
    names = segzoo.list_models("segformer_*")
    assert names == sorted(names)
    for family, sizes in FAMILY_SIZES.items():
        for size in sizes:
            assert f"segformer_{family}_{size}" in names
    assert "segformer_retfound_dinov2_large" in names
    assert all(n.startswith("segformer_") for n in names)
    assert segzoo.list_models("*visionfm*") == [
        "dpt_visionfm_base", "eomt_visionfm_base", "mask2former_visionfm_base", "segformer_visionfm_base",
        "upernet_visionfm_base"
    ]
    assert segzoo.list_models(["segformer_*dinov3_small", "segformer_*visionfm*"]) == [
        "segformer_dinov3_small", "segformer_visionfm_base"
    ]
    assert "segformer_dinov2_reg4_base" not in segzoo.list_models("segformer_*", exclude_filters="*reg4*")


def test_list_pretrained_tags():
    tagged = segzoo.list_models("*dinov3*", pretrained=True)
    assert "segformer_dinov3_large.lvd1689m" in tagged
    assert "segformer_dinov3_large.sat493m" in tagged
    assert all("." in n for n in tagged)
    assert segzoo.list_pretrained("segformer_retfound_large*") == [
        "segformer_retfound_large.cfp",
        "segformer_retfound_large.meh",
        "segformer_retfound_large.oct",
    ]


def test_is_model_and_entrypoint():
    assert segzoo.is_model("segformer_dinov3_large")
    assert segzoo.is_model("segformer_dinov3_large.lvd1689m")
    assert not segzoo.is_model("segformer_dinov3_large.nope")
    assert not segzoo.is_model("unet_resnet50")
    assert segzoo.model_entrypoint("segformer_dinov2_base").__name__ == "segformer_dinov2_base"


def test_pretrained_cfg_records_source_licence_normalisation():
    cfg = segzoo.get_pretrained_cfg("segformer_dinov3_large")
    assert cfg.tag == "lvd1689m" and cfg.hf_hub_id == "timm/vit_large_patch16_dinov3.lvd1689m"
    assert cfg.license == "dinov3-license" and not cfg.gated and cfg.patch_size == 16
    sat = segzoo.get_pretrained_cfg("segformer_dinov3_large.sat493m")
    assert sat.mean != cfg.mean  # satellite weights use their own statistics (from timm's config)
    ret = segzoo.get_pretrained_cfg("segformer_retfound_large.oct")
    assert ret.gated and ret.license == "cc-by-nc-4.0" and ret.checkpoint_format == "retfound_mae"
    vfm = segzoo.get_pretrained_cfg("segformer_visionfm_base.fundus")
    assert vfm.hf_hub_id is None and "VisionFM" in vfm.source
    assert segzoo.get_pretrained_cfg("segformer_dinov2_small").patch_size == 14


def test_weights_have_one_record_from_backbone_spec_to_built_model():
    """The spec's weight set, the registry's entry for each head and the model's dict are one record."""
    spec_cfg = BACKBONES["dinov3_large"].weights[1]
    for head in ("segformer", "upernet", "mask2former", "dpt", "eomt"):
        registered = segzoo.get_pretrained_cfg(f"{head}_dinov3_large.sat493m")
        assert isinstance(registered, segzoo.PretrainedCfg)
        assert registered == spec_cfg.for_model(f"{head}_dinov3_large")
    with torch.device("meta"):
        model = segzoo.create_model("segformer_dinov3_large.sat493m", num_classes=2)
    built = model.pretrained_cfg
    assert {k: built[k] for k in registered.to_dict()} == registered.for_model("segformer_dinov3_large").to_dict()
    assert built["feature_indices"] == [5, 11, 17, 23] and built["in_chans"] == 3
    mit = segzoo.get_pretrained_cfg("segformer_mit_b0.ade20k")
    assert (mit.weights_scope, mit.num_classes, mit.backbone) == ("full", 150, "mit_b0")
    with pytest.raises(ValueError, match="names no model"):
        segzoo.register_pretrained_cfgs([spec_cfg])


def test_unknown_names_suggest_close_matches():
    with pytest.raises(segzoo.UnknownModelError, match="segformer_dinov3_large"):
        segzoo.create_model("segformer_dinov3_lrage", num_classes=2)
    with pytest.raises(segzoo.UnknownModelError, match="lvd1689m"):
        segzoo.create_model("segformer_dinov3_large.lvd", num_classes=2)
    with pytest.raises(segzoo.UnknownModelError, match="Closest registered"):
        segzoo.get_pretrained_cfg("segformer_dino_base")


def test_backbone_specs():
    assert BACKBONES["dinov3_large"].timm_arch == "vit_large_patch16_dinov3"
    assert BACKBONES["dinov2_giant"].timm_arch == "vit_giant_patch14_dinov2"
    assert BACKBONES["retfound_large"].patch_size == 16
    assert BACKBONES["retfound_dinov2_large"].patch_size == 14
    assert BACKBONES["dinov3_base"].feature_indices == [2, 5, 8, 11]
    assert BACKBONES["dinov3_large"].feature_indices == [5, 11, 17, 23]
    assert BACKBONES["dinov2_giant"].feature_indices == [9, 19, 29, 39]
    assert default_feature_indices(2) == [0, 0, 0, 1]


@pytest.mark.parametrize("name", segzoo.list_models(exclude_filters="segformer_mit_*"))  # MiT: test_segformer_mit.py
def test_every_registered_model_builds_at_full_size_on_meta(name):
    with torch.device("meta"):
        model = segzoo.create_model(name, num_classes=3)
    spec = BACKBONES[model.pretrained_cfg["backbone"]]
    assert model.backbone.feature_indices == spec.feature_indices
    assert model.backbone.depth == spec.depth  # the last feature block is the last block: nothing pruned
    head = model.decode_head
    if hasattr(head, "class_predictor"):  # mask classification: classes + "no object"
        assert head.class_predictor.out_features == 3 + 1
    else:
        assert head.classifier.out_channels == 3
    assert model.patch_size == spec.patch_size


HEADS = ("segformer", "upernet", "mask2former", "dpt", "eomt")
# per head, the tiny settings the one-block backbones below take
_TINY_HEAD_KWARGS = {
    "segformer": {"decoder_hidden_size": 32},
    "upernet": {"decoder_hidden_size": 32},
    "mask2former": {"decoder_hidden_size": 32, "num_queries": 4, "decoder_layers": 2, "encoder_layers": 1,
                    "num_attention_heads": 2},
    "dpt": {"decoder_hidden_size": 32},
    "eomt": {"num_queries": 4, "num_blocks": 1},  # no decoder width: the queries run in the ViT's last block
}


@pytest.mark.parametrize("spec_name", sorted(BACKBONES))
def test_every_backbone_spec_has_every_head_registered_on_that_backbone(spec_name):
    """The factories are written out one by one (greppable, as in timm): each must exist and
    build its own backbone, not a neighbour's copied by mistake."""
    spec = BACKBONES[spec_name]
    # the giant models' SwiGLU MLP needs an even hidden width: 96 wide instead of the usual 64
    backbone_kwargs = dict(depth=1, embed_dim=96 if "giant" in spec_name else 64, num_heads=2)
    for head in HEADS:
        name = f"{head}_{spec_name}"
        assert segzoo.is_model(name), f"{name} is not registered: add its factory in segzoo/models/{head}.py"
        model = segzoo.create_model(name, num_classes=2, backbone_kwargs=backbone_kwargs, **_TINY_HEAD_KWARGS[head])
        assert model.backbone.spec.name == spec_name
        assert model.backbone.model.patch_embed.patch_size[0] == spec.patch_size


def test_giant_models_with_too_narrow_tiny_kwargs_name_the_rule():
    with pytest.raises(ValueError, match=r"SwiGLU MLP needs int\(embed_dim \* mlp_ratio\) to be even"):
        segzoo.create_model("segformer_dinov2_giant", num_classes=2,
                            backbone_kwargs=dict(depth=2, embed_dim=64, num_heads=2))
