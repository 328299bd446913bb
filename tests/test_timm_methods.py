"""The methods timm users reach for, on every zoo model: get_classifier / reset_classifier,
forward_features / feature_info / forward_head / num_features, group_matcher / no_weight_decay
(through timm's own optimizer factory), and segzoo.optim.param_groups on MiT."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from timm.models import group_parameters
from timm.optim import create_optimizer_v2
from torch import nn

import segzoo
from segzoo.optim import param_groups
from tests.checkpoint_layouts import source_vit
from tests.tiny_models import TINY, TINY_EOMT, TINY_MASK2FORMER, TINY_MIT

# (name, kwargs): one model per head, plus MiT
MODELS = {
    "segformer": ("segformer_dinov2_reg4_small", TINY),
    "upernet": ("upernet_dinov3_small", TINY),
    "dpt": ("dpt_dinov3_small", TINY),
    "mask2former": ("mask2former_dinov2_small", {**TINY, **TINY_MASK2FORMER}),
    "eomt": ("eomt_dinov3_small", TINY_EOMT),
    "mit": ("segformer_mit_b0", TINY_MIT),
}


def _create(key: str, num_classes: int = 3, **extra) -> nn.Module:
    name, kwargs = MODELS[key]
    return segzoo.create_model(name, num_classes=num_classes, **kwargs, **extra)


# -- get_classifier / reset_classifier -------------------------------------------------------


@pytest.mark.parametrize("key", ["segformer", "upernet", "mit"])
def test_get_classifier_is_the_heads_final_1x1_conv(key):
    model = _create(key)
    classifier = model.get_classifier()
    assert classifier is model.decode_head.classifier
    assert isinstance(classifier, nn.Conv2d) and classifier.out_channels == 3 and classifier.kernel_size == (1, 1)


def test_get_classifier_of_mask2former_is_the_class_predictor_with_no_object():
    model = _create("mask2former")
    classifier = model.get_classifier()
    assert classifier is model.decode_head.class_predictor
    assert isinstance(classifier, nn.Linear) and classifier.out_features == 3 + 1  # + "no object"


@pytest.mark.parametrize("key", ["segformer", "upernet", "mit"])
def test_reset_classifier_keeps_the_rest_and_gives_new_logits(key):
    model = _create(key)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_classifier(5)
    classifier = model.get_classifier()
    assert isinstance(classifier, nn.Conv2d) and classifier.out_channels == 5
    assert model.num_classes == 5 and model.model_kwargs["num_classes"] == 5
    assert model.decode_head.config.num_labels == 5
    after = model.state_dict()
    for key_name, value in before.items():
        if ".classifier." not in key_name:
            assert torch.equal(after[key_name], value), key_name
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)


def test_reset_classifier_initialises_like_the_head(tiny):
    # the zoo's SegFormer/UperNet heads are standalone modules: PyTorch's default init, zero-mean uniform
    model = segzoo.create_model("segformer_dinov2_small", num_classes=2, **tiny)
    model.reset_classifier(7)
    weight = model.get_classifier().weight
    bound = 1 / weight[0].numel() ** 0.5  # kaiming_uniform(a=sqrt(5)) on fan_in
    assert weight.abs().max() <= bound and weight.std() > bound / 4


def test_reset_classifier_mask2former_moves_the_no_object_class():
    model = _create("mask2former")
    model.reset_classifier(5)
    head = model.decode_head
    assert head.class_predictor.out_features == 6
    assert torch.all(head.class_predictor.bias == 0)  # transformers' init: normal weights, zero bias
    assert 0 < head.class_predictor.weight.std() < 0.05
    assert head.num_classes == head.config.num_labels == head.criterion.num_labels == 5
    no_object_weight = head.config.no_object_weight
    assert head.criterion.empty_weight.tolist() == pytest.approx([1.0] * 5 + [no_object_weight])
    assert "decode_head.criterion.empty_weight" in dict(model.named_buffers())  # still saved with the model
    model.train()
    outputs = model(torch.randn(2, 3, 56, 56))
    assert outputs["class_queries_logits"].shape[-1] == 6
    loss = model.compute_loss(outputs, torch.randint(0, 5, (2, 56, 56)))
    assert torch.isfinite(loss)
    loss.backward()
    with pytest.raises(ValueError, match=r"target holds 5: neither class ids in \[0, 4\]"):
        model.compute_loss(outputs, torch.full((2, 56, 56), 5))
    assert model.eval()(torch.randn(1, 3, 56, 56)).shape == (1, 5, 56, 56)


@pytest.mark.parametrize("key", sorted(MODELS))
def test_saved_after_reset_reloads_with_identical_logits(key, tmp_path, capsys):
    model = _create(key)
    model.reset_classifier(5)
    folder = segzoo.save_pretrained(model, tmp_path / key)
    config = json.loads((folder / "config.json").read_text())
    assert config["num_classes"] == config["model_kwargs"]["num_classes"] == 5
    reloaded = segzoo.create_model(str(folder)).eval()
    assert reloaded.num_classes == 5
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(reloaded(images), model.eval()(images))


def test_reset_classifier_of_a_tagged_mit_model_reloads(tmp_path, capsys):
    # the tag's default (19 Cityscapes classes) was the count; after the reset the saved kwarg rules
    model = segzoo.create_model("segformer_mit_b0.cityscapes", **TINY_MIT)
    assert model.num_classes == 19
    model.reset_classifier(4)
    reloaded = segzoo.create_model(str(segzoo.save_pretrained(model, tmp_path / "m"))).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(reloaded(images), model.eval()(images))


def test_adapter_only_save_after_reset_reloads(tiny, tmp_path, capsys):
    base_file = tmp_path / "backbone.safetensors"  # an adapter folder records its base: a local file here
    save_file(source_vit("dinov3_base").state_dict(), str(base_file))
    model = segzoo.create_model("segformer_dinov3_base", num_classes=2, checkpoint_path=base_file,
                                lora=dict(r=2), **tiny)
    model.reset_classifier(4)
    folder = segzoo.save_pretrained(model, tmp_path / "adapter", adapter_only=True)
    reloaded = segzoo.create_model(str(folder)).eval()
    assert reloaded.num_classes == 4
    images = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(reloaded(images), model.eval()(images))


@pytest.mark.parametrize("bad", [0, -1, 2.5, None, True])
def test_reset_classifier_rejects_bad_counts(tiny, bad):
    model = segzoo.create_model("segformer_dinov2_small", num_classes=2, **tiny)
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(bad)
    assert model.get_classifier().out_channels == 2


def test_a_head_without_classifier_says_what_to_add(tiny):
    model = segzoo.create_model("segformer_dinov2_small", num_classes=2, **tiny)
    del model.decode_head.classifier
    with pytest.raises(TypeError, match="name the head's final per-class layer `classifier`"):
        model.get_classifier()


# -- forward_features / feature_info -----------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, reductions",
    [
        ("segformer_dinov3_small", dict(TINY, neck="pyramid"), [4, 8, 16, 32]),  # patch 16
        ("upernet_dinov2_small", dict(TINY, neck="pyramid"), [3.5, 7, 14, 28]),  # patch 14
        ("segformer_dinov3_small", dict(TINY, neck="none"), [16, 16, 16, 16]),
        ("segformer_mit_b0", TINY_MIT, [4, 8, 16, 32]),
    ],
)
def test_feature_info_matches_forward_features(name, kwargs, reductions):
    model = segzoo.create_model(name, num_classes=2, **kwargs).eval()
    info = model.feature_info
    assert [i["reduction"] for i in info] == reductions
    assert all(set(i) >= {"num_chs", "reduction", "module"} for i in info)
    size = 224  # a multiple of 16, 14 and 32: every map has exactly size / reduction pixels
    with torch.no_grad():
        maps = model.forward_features(torch.randn(2, 3, size, size))
    assert len(maps) == len(info)
    for feature, i in zip(maps, info):
        assert feature.shape == (2, i["num_chs"], size / i["reduction"], size / i["reduction"])
    assert [i["num_chs"] for i in info] == list(model.neck.out_channels)


def test_forward_features_feeds_the_head(tiny):
    model = segzoo.create_model("segformer_dinov3_small", num_classes=2, **tiny).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits = nn.functional.interpolate(model.decode_head(model.forward_features(images)), size=(64, 64),
                                           mode="bilinear", align_corners=False)
        assert torch.allclose(logits, model(images))
    with pytest.raises(ValueError, match="4-D input"):
        model.forward_features(torch.randn(3, 64, 64))


# (key, the head's logits per side of its finest input map: DPT's fusion and head upsample x4)
DENSE = [("segformer", 1), ("upernet", 1), ("dpt", 4), ("mit", 1)]


@pytest.mark.parametrize("key, scale", DENSE)
def test_forward_head_splits_forward_and_pre_logits_are_what_the_classifier_reads(key, scale):
    model = _create(key).eval()
    images = torch.randn(2, 3, 64, 64)
    padded = -(-64 // model.pad_multiple) * model.pad_multiple  # the maps belong to the padded input
    classifier = model.get_classifier()
    assert model.num_features == classifier.in_channels == 32  # the tiny heads' decoder_hidden_size
    with torch.no_grad():
        features = model.forward_features(images)
        logits = model.forward_head(features)
        assert logits.shape == (2, 3, features[0].shape[-2] * scale, features[0].shape[-1] * scale)
        upsampled = nn.functional.interpolate(logits, size=(padded, padded), mode="bilinear", align_corners=False)
        torch.testing.assert_close(upsampled[..., :64, :64], model(images))
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape[:2] == (2, model.num_features)
        # the classifier on the pre-logits gives the logits (DPT upsamples them x2 after it)
        direct = classifier(pre_logits)
        if direct.shape[-2:] != logits.shape[-2:]:
            direct = nn.functional.interpolate(direct, size=logits.shape[-2:], mode="bilinear", align_corners=True)
        torch.testing.assert_close(direct, logits)
    assert not classifier._forward_pre_hooks  # the capture leaves nothing behind


def test_set_heads_forward_head_and_num_features():
    model = _create("mask2former").train()
    images = torch.randn(2, 3, 64, 64)
    assert model.num_features == model.decode_head.class_predictor.in_features == TINY["decoder_hidden_size"]
    torch.manual_seed(0)
    outputs = model.forward_head(model.forward_features(images))
    features = model.forward_features(images)
    assert outputs["masks_queries_logits"].shape == (2, 8, *features[0].shape[-2:])
    torch.manual_seed(0)
    torch.testing.assert_close(outputs["class_queries_logits"], model(images)["class_queries_logits"])
    with pytest.raises(NotImplementedError, match="classifies queries, not pixels"):
        model.forward_head(model.forward_features(images), pre_logits=True)
    eomt = _create("eomt")
    assert eomt.num_features == eomt.backbone.embed_dim
    with pytest.raises(NotImplementedError, match=r"queries join the ViT's last 2 blocks.*model\(x\)"):
        eomt.forward_head(eomt.forward_features(images))


def test_feature_info_of_a_fixed_size_model(tiny):
    model = segzoo.create_model("segformer_dinov2_small", num_classes=2, img_size=224, **tiny)
    assert [i["reduction"] for i in model.feature_info] == [3.5, 7, 14, 28]
    info = model.feature_info
    info[0]["num_chs"] = -1  # a copy: the model's own stays
    assert model.feature_info[0]["num_chs"] > 0


# -- group_matcher / no_weight_decay with timm's optimizer factory -----------------------------


def _timm_groups(model: nn.Module) -> list[dict]:
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    names = {id(p): n for n, p in model.named_parameters()}
    return [dict(group, names=[names[id(p)] for p in group["params"]]) for group in optimizer.param_groups]


def test_timm_layer_decay_groups_on_a_vit():
    model = _create("segformer")  # 2 blocks, cls + 4 register tokens, pos_embed
    depth = len(model.backbone.model.blocks)
    groups = _timm_groups(model)
    num_layers = depth + 2  # stem, one per block, neck + head
    assert len(groups) == 2 * num_layers  # a decay and a no-decay group per layer
    scale = {name: g["lr_scale"] for g in groups for name in g["names"]}
    assert scale["backbone.model.patch_embed.proj.weight"] == pytest.approx(0.75 ** (num_layers - 1))
    for name in ("backbone.model.cls_token", "backbone.model.reg_token", "backbone.model.pos_embed"):
        assert scale[name] == scale["backbone.model.patch_embed.proj.weight"], name
    block_scales = [scale[f"backbone.model.blocks.{i}.attn.qkv.weight"] for i in range(depth)]
    assert block_scales == [pytest.approx(0.75 ** (num_layers - 1 - (i + 1))) for i in range(depth)]
    assert block_scales == sorted(block_scales)  # deeper blocks train faster
    for name in scale:
        if name.startswith(("neck.", "decode_head.")):
            assert scale[name] == 1.0, name


def test_no_weight_decay_names_embeddings_and_timm_exempts_them():
    model = _create("segformer")
    exempt = model.no_weight_decay()
    assert exempt == {"backbone.model.cls_token", "backbone.model.reg_token", "backbone.model.pos_embed"}
    assert exempt <= dict(model.named_parameters()).keys()
    groups = _timm_groups(model)
    decay = {name: g["weight_decay"] for g in groups for name in g["names"]}
    for name in exempt:
        assert decay[name] == 0.0, name
    assert decay["backbone.model.blocks.0.attn.qkv.weight"] == 0.05
    assert decay["decode_head.classifier.weight"] == 0.05
    # without layer decay, timm's plain weight-decay groups exempt them as well
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert all(id(p) in no_decay for n, p in model.named_parameters() if n in exempt)


def test_dinov3_rope_model_has_no_position_embedding_to_exempt():
    model = _create("upernet")
    assert model.no_weight_decay() == {"backbone.model.cls_token", "backbone.model.reg_token"}


@pytest.mark.parametrize("key", sorted(MODELS))
def test_group_matcher_layers_are_param_groups_layers(key):
    model = _create(key)
    assert model.group_matcher(coarse=True) == model.group_matcher()
    timm_layers = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    top = max(timm_layers.values())
    assert top >= 3  # stem, at least two blocks or stages, neck + head
    ours = {name: g["lr_scale"] for g in param_groups(model, lr=1.0, layer_decay=0.5) for name in g["param_names"]}
    assert ours == {name: pytest.approx(0.5 ** (top - layer)) for name, layer in timm_layers.items()}


def test_timm_layer_decay_on_mit_is_stage_wise():
    model = _create("mit")
    groups = _timm_groups(model)
    num_layers = 4 + 2  # stem (first patch embedding), 4 stages, neck + head
    assert len({g["lr_scale"] for g in groups}) == num_layers
    scale = {name: g["lr_scale"] for g in groups for name in g["names"]}
    assert scale["backbone.model.stages.0.patch_embeddings.proj.weight"] == pytest.approx(0.75 ** 5)
    for stage in range(4):
        expected = pytest.approx(0.75 ** (num_layers - 1 - (stage + 1)))
        assert scale[f"backbone.model.stages.{stage}.blocks.0.attention.q_proj.weight"] == expected
        assert scale[f"backbone.model.stages.{stage}.layer_norm.weight"] == expected
        if stage:  # a later stage's downsampling patch embedding belongs to its stage
            assert scale[f"backbone.model.stages.{stage}.patch_embeddings.proj.weight"] == expected
    assert scale["decode_head.classifier.weight"] == 1.0
    assert model.no_weight_decay() == set()


# -- segzoo.optim.param_groups on MiT ------------------------------------------------------------


def test_param_groups_defaults_work_on_mit_stage_wise():
    model = _create("mit")
    groups = param_groups(model, lr=1.0)  # defaults: layer_decay=0.75
    by_name = {name: g for g in groups for name in g["param_names"]}
    assert set(by_name) == {n for n, _ in model.named_parameters()}
    assert by_name["backbone.model.stages.0.patch_embeddings.proj.weight"]["lr"] == pytest.approx(0.75 ** 5)
    for stage in range(4):
        group = by_name[f"backbone.model.stages.{stage}.blocks.0.attention.q_proj.weight"]
        assert group["lr"] == pytest.approx(0.75 ** (4 - stage))
    assert by_name["decode_head.classifier.weight"]["lr"] == 1.0
    # the same scales as timm's factory builds from group_matcher
    timm_scale = {name: g["lr_scale"] for g in _timm_groups(model) for name in g["names"]}
    assert {name: g["lr_scale"] for name, g in by_name.items()} == pytest.approx(timm_scale)
    torch.optim.AdamW(groups).step()  # a real optimizer takes them


def test_param_groups_match_timm_on_a_vit():
    model = _create("segformer")
    ours = {name: (g["lr_scale"], g["weight_decay"]) for g in param_groups(model, lr=1.0, weight_decay=0.05)
            for name in g["param_names"]}
    timm = {name: (g["lr_scale"], g["weight_decay"]) for g in _timm_groups(model) for name in g["names"]}
    assert ours.keys() == timm.keys()
    for name in ours:
        assert ours[name][0] == pytest.approx(timm[name][0]), name
    assert {n: wd for n, (_, wd) in ours.items()} == {n: wd for n, (_, wd) in timm.items()}


def test_layer_decay_still_refuses_a_model_without_encoder_layers():
    with pytest.raises(TypeError, match="pass layer_decay=1.0 for other encoders"):
        param_groups(nn.Linear(2, 2), lr=1e-3)
    assert len(param_groups(nn.Linear(2, 2), lr=1e-3, layer_decay=1.0)) == 2
