import pytest
import torch

import segzoo
from segzoo.backbones import BACKBONES, default_feature_indices



def test_list_models_sorted_and_filtered():
    names = segzoo.list_models("segformer_*")
    assert names == sorted(names)
    assert {"segformer_dinov3_large", "segformer_retfound_dinov2_large", "segformer_mit_b5"} <= set(names)
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
    assert (cfg.license, cfg.license_name) == ("other", "dinov3-license") and not cfg.gated and cfg.patch_size == 16
    assert cfg.license_link.startswith("https://ai.meta.com/") and "dinov3-license (https://" in cfg.license_text
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
    spec = segzoo.model_entry(name).backbone
    assert model.backbone.spec is spec and model.pretrained_cfg["backbone"] == spec.name
    assert model.backbone.feature_indices == spec.feature_indices
    assert model.backbone.depth == spec.depth  # the last feature block is the last block: nothing pruned
    head = model.decode_head
    if hasattr(head, "class_predictor"):  # mask classification: classes + "no object"
        assert head.class_predictor.out_features == 3 + 1
    else:
        assert head.classifier.out_channels == 3
    assert model.patch_size == spec.patch_size


def test_entries_are_the_head_table_over_the_backbone_specs():
    """Every head goes over every spec of a kind it decodes, and the entry's fields say so: the
    registry is generated from the two tables, so a backbone or head cannot be half-added."""
    expected = {f"{head.name}_{spec.name}": (head, spec) for head in segzoo.list_heads()
                for spec in BACKBONES.values() if spec.kind in head.backbone_kinds}
    assert segzoo.list_models() == sorted(expected)
    for name, (head, spec) in expected.items():
        entry = segzoo.model_entry(name)
        assert (entry.head, entry.backbone) == (head, spec)
        assert [c.tag for c in entry.pretrained_cfgs.values()] == [w.tag for w in spec.weights]
        assert entry.entrypoint.__name__ == name and spec.title in entry.entrypoint.__doc__
    assert segzoo.model_entry("segformer_mit_b0").supports_lora is False
    assert segzoo.model_entry("eomt_dinov3_small.lvd1689m").supports_lora is True
    assert [h.name for h in segzoo.list_heads() if h.set_prediction] == ["mask2former", "eomt"]


def test_backbone_specs_copy_timm_facts_correctly():
    """The specs are timm-free (listing needs no timm), so what they copy from timm's configs is checked here."""
    import timm

    for spec in BACKBONES.values():
        for cfg in spec.weights:
            if not cfg.timm_tag:
                continue
            timm_cfg = timm.models.get_pretrained_cfg(f"{spec.timm_arch}.{cfg.timm_tag}")
            assert (cfg.mean, cfg.std) == (tuple(timm_cfg.mean), tuple(timm_cfg.std)), cfg.name
            assert cfg.hf_hub_id == (timm_cfg.hf_hub_id or f"timm/{spec.timm_arch}.{cfg.timm_tag}").rstrip("/")
        if spec.timm_arch:
            model = timm.create_model(spec.timm_arch, pretrained=False, num_classes=0, **spec.timm_kwargs,
                                      **({"depth": 1} if spec.depth > 1 else {}))
            assert model.patch_embed.patch_size[0] == spec.patch_size, spec.name


def test_giant_models_with_too_narrow_tiny_kwargs_name_the_rule():
    with pytest.raises(ValueError, match=r"SwiGLU MLP needs int\(embed_dim \* mlp_ratio\) to be even"):
        segzoo.create_model("segformer_dinov2_giant", num_classes=2,
                            backbone_kwargs=dict(depth=2, embed_dim=64, num_heads=2))


def test_medical_backbones_build_the_published_architectures():
    """MedDINOv3's model is vit_base(n_storage_tokens=4, qkv_bias=False, layerscale_init=1e-5) from its
    repository; RAD-DINO's is DINOv2's ViT-B/14 at 518 px (a 37 x 37 position grid, as its processor crops)."""
    import timm

    with torch.device("meta"):
        ct = timm.create_model(BACKBONES["meddinov3_base"].timm_arch, pretrained=False, num_classes=0)
        cxr = timm.create_model(BACKBONES["rad_dino_base"].timm_arch, pretrained=False, num_classes=0)
    assert (ct.embed_dim, len(ct.blocks), ct.reg_token.shape[1], ct.patch_embed.patch_size) == (768, 12, 4, (16, 16))
    assert ct.blocks[0].attn.q_bias is None and ct.blocks[0].attn.qkv.bias is None  # no qkv bias at all
    assert ct.blocks[0].gamma_1 is not None and ct.pos_embed is None  # LayerScale; RoPE, no position table
    assert (cxr.embed_dim, len(cxr.blocks), cxr.patch_embed.patch_size, cxr.pos_embed.shape[1]) == \
        (768, 12, (14, 14), 1 + 37 * 37)
    assert cxr.reg_token is None and cxr.blocks[0].ls1.gamma.shape == (768,)
