import pytest
import torch
from timm.models import group_parameters
from timm.models._manipulate import group_with_matcher
from timm.optim import create_optimizer_v2
from torch import nn

import segzoo
from segzoo.optim import param_groups, prefix_group_matcher
from tests.tiny_models import TINY, TINY_EOMT, TINY_MIT

NAME = "segformer_dinov2_reg4_base"  # has pos_embed, cls and register tokens


def _by_name(groups):
    return {name: group for group in groups for name in group["param_names"]}


def test_no_weight_decay_on_norms_biases_embeddings(tiny):
    model = segzoo.create_model(NAME, num_classes=2, **tiny)
    groups = _by_name(param_groups(model, lr=1e-3, weight_decay=0.05))
    for name in ("backbone.model.pos_embed", "backbone.model.cls_token", "backbone.model.reg_token",
                 "backbone.model.blocks.0.norm1.weight", "backbone.model.blocks.0.attn.qkv.bias",
                 "backbone.model.blocks.1.ls1.gamma", "neck.levels.2.0.weight"):
        assert groups[name]["weight_decay"] == 0.0, name
    for name in ("backbone.model.blocks.0.attn.qkv.weight", "backbone.model.patch_embed.proj.weight",
                 "decode_head.linear_fuse.weight"):
        assert groups[name]["weight_decay"] == 0.05, name


def test_layer_wise_decay_and_head_multiplier(tiny):
    model = segzoo.create_model(NAME, num_classes=2, **tiny)  # 4 blocks
    groups = _by_name(param_groups(model, lr=1.0, layer_decay=0.5, head_lr_mult=10.0))
    assert groups["backbone.model.patch_embed.proj.weight"]["lr"] == pytest.approx(0.5**5)
    assert groups["backbone.model.pos_embed"]["lr"] == pytest.approx(0.5**5)
    assert groups["backbone.model.blocks.0.mlp.fc1.weight"]["lr"] == pytest.approx(0.5**4)
    assert groups["backbone.model.blocks.2.mlp.fc1.weight"]["lr"] == pytest.approx(0.5**2)
    assert groups["backbone.model.blocks.3.mlp.fc1.weight"]["lr"] == pytest.approx(0.5)
    assert groups["decode_head.classifier.weight"]["lr"] == pytest.approx(10.0)
    assert groups["neck.levels.0.0.weight"]["lr_scale"] == pytest.approx(10.0)
    flat = param_groups(model, lr=2.0, layer_decay=1.0)
    assert {g["lr"] for g in flat} == {2.0} and len(flat) == 2  # decay / no-decay only


def test_lora_aware_and_skips_frozen(tiny):
    model = segzoo.create_model(NAME, num_classes=2, lora=dict(r=2), **tiny)
    groups = param_groups(model, lr=1.0, layer_decay=0.5)
    names = _by_name(groups)
    assert not any(".base_layer." in n or "patch_embed" in n for n in names)  # frozen -> absent
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(names) == trainable
    assert names["backbone.model.blocks.0.attn.qkv.lora_A.default.weight"]["lr"] == pytest.approx(0.5**4)
    assert names["backbone.model.blocks.3.attn.qkv.lora_B.default.weight"]["lr"] == pytest.approx(0.5)
    # a real optimizer takes the groups and steps
    optimizer = torch.optim.AdamW(groups)
    model(torch.randn(1, 3, 28, 28)).sum().backward()
    optimizer.step()


def test_bad_arguments(tiny):
    model = segzoo.create_model(NAME, num_classes=2, freeze_backbone=True, **tiny)
    with pytest.raises(ValueError, match="layer_decay must be in"):
        param_groups(model, lr=1e-3, layer_decay=0.0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        param_groups(model, lr=0)
    for p in model.parameters():
        p.requires_grad = False
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(model, lr=1e-3)
    with pytest.raises(TypeError, match="needs a segzoo ViT model"):
        param_groups(torch.nn.Linear(2, 2), lr=1e-3)


def test_mit_takes_every_parameter_once_with_and_without_layer_decay():
    mit = segzoo.create_model("segformer_mit_b0", num_classes=2, **TINY_MIT)
    for layer_decay in (1.0, 0.75):  # stage-wise decay (see test_timm_methods.py for the scales)
        groups = param_groups(mit, lr=1e-3, layer_decay=layer_decay)
        ids = [id(p) for g in groups for p in g["params"]]
        assert len(ids) == len(set(ids)) == len(list(mit.parameters()))


def test_zero_weight_decay_keeps_the_decay_split(tiny):
    # the group layout (what an optimizer checkpoint indexes) does not depend on weight_decay's value
    model = segzoo.create_model(NAME, num_classes=2, **tiny)
    groups = param_groups(model, lr=1.0, weight_decay=0.0, layer_decay=1.0)
    assert [g["weight_decay"] for g in groups] == [0.0, 0.0]
    split = {frozenset(g["param_names"]) for g in param_groups(model, lr=1.0, weight_decay=0.05, layer_decay=1.0)}
    assert {frozenset(g["param_names"]) for g in groups} == split


# -- the layers come from each backbone's group_matcher, through timm ----------------------------

# a plain ViT, an Eva with RoPE and LoRA, an EoMT (keeps the ViT's final norm), MiT
TIMM_PARITY = {
    "vit": (NAME, TINY),
    "eva_rope_lora": ("upernet_dinov3_small", dict(TINY, lora=dict(r=2))),
    "eomt_kept_norm": ("eomt_dinov3_small", TINY_EOMT),
    "mit": ("segformer_mit_b0", TINY_MIT),
}


@pytest.mark.parametrize("key", sorted(TIMM_PARITY))
def test_timm_create_optimizer_v2_builds_the_same_scales_and_decay(key):
    name, kwargs = TIMM_PARITY[key]
    model = segzoo.create_model(name, num_classes=2, **kwargs)
    optimizer = create_optimizer_v2(model, "adamw", lr=1.0, weight_decay=0.05, layer_decay=0.6)
    names = {id(p): n for n, p in model.named_parameters()}
    timm = {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    ours = {n: (g["lr_scale"], g["weight_decay"]) for g in param_groups(model, lr=1.0, layer_decay=0.6)
            for n in g["param_names"]}
    assert ours == timm
    assert len({scale for scale, _ in ours.values()}) > 3  # layer decay did act


def test_backbone_group_matchers_number_stem_blocks_then_the_rest():
    vit = segzoo.create_model("upernet_dinov3_small", num_classes=2, lora=dict(r=2), **TINY)
    layers = group_parameters(vit.backbone, vit.backbone.group_matcher(), reverse=True)
    depth = len(vit.backbone.model.blocks)
    for name, layer in layers.items():
        if name.startswith("model.blocks."):  # LoRA's base_layer / lora_A / lora_B sit below the block
            assert layer == int(name.split(".")[2]) + 1, name
        else:
            assert layer == 0, name  # patch embedding, tokens (no final norm: pruned)
    assert any(".base_layer." in n for n in layers) and any(".lora_A." in n for n in layers)
    assert max(layers.values()) == depth
    # the Segmenter's matcher is the backbone's under "backbone.": the same layers, the head after them
    full = group_parameters(vit, vit.group_matcher(), reverse=True)
    assert {n.removeprefix("backbone."): layer for n, layer in full.items() if n.startswith("backbone.")} == layers
    assert {layer for n, layer in full.items() if not n.startswith("backbone.")} == {depth + 1}
    assert vit.group_matcher(coarse=True) == vit.group_matcher()


def test_mit_group_matcher_covers_both_transformers_layouts():
    mit = segzoo.create_model("segformer_mit_b0", num_classes=2, **TINY_MIT).backbone
    layers = group_parameters(mit, mit.group_matcher(), reverse=True)  # stages.{i} layout
    assert layers["model.stages.0.patch_embeddings.proj.weight"] == 0
    for stage in range(4):
        for part in ("blocks.0.attention.q_proj.weight", "layer_norm.weight"):
            assert layers[f"model.stages.{stage}.{part}"] == stage + 1
    assert layers["model.stages.3.patch_embeddings.proj.weight"] == 4
    assert mit.no_weight_decay() == set()

    # the older encoder.{patch_embeddings,block,layer_norm}.{i} layout of transformers 4
    encoder = nn.Module()
    encoder.patch_embeddings = nn.ModuleList(nn.Conv2d(1, 1, 1) for _ in range(4))
    encoder.block = nn.ModuleList(nn.ModuleList([nn.Linear(1, 1)]) for _ in range(4))
    encoder.layer_norm = nn.ModuleList(nn.LayerNorm(1) for _ in range(4))
    old = nn.Module()
    old.model = nn.Module()
    old.model.encoder = encoder
    layers = group_parameters(old, mit.group_matcher(), reverse=True)
    assert layers["model.encoder.patch_embeddings.0.weight"] == 0
    for stage in range(4):
        for name in (f"block.{stage}.0.weight", f"layer_norm.{stage}.bias"):
            assert layers[f"model.encoder.{name}"] == stage + 1
        if stage:
            assert layers[f"model.encoder.patch_embeddings.{stage}.weight"] == stage + 1


def test_vit_no_weight_decay_forwards_timm_plus_its_tokens(tiny):
    model = segzoo.create_model(NAME, num_classes=2, **tiny)
    assert model.backbone.no_weight_decay() == {"model.pos_embed", "model.cls_token", "model.reg_token"}
    assert model.no_weight_decay() == {f"backbone.{n}" for n in model.backbone.no_weight_decay()}


def test_prefix_group_matcher():
    # a top-level alternation stays under the prefix; capture groups and ordinal suffixes stay
    matcher = dict(stem=r"^cls|pos", blocks=[(r"^blocks\.(\d+)\.", None), (r"^norm", (99999,))], skip=None)
    prefixed = prefix_group_matcher(matcher, "backbone.")
    names = ["backbone.cls.w", "backbone.pos.w", "backbone.blocks.1.w", "backbone.blocks.0.w", "backbone.norm.w",
             "pos.w", "head.w"]
    layers = group_with_matcher(((n, None) for n in names), prefixed, reverse=True)
    assert layers == {"backbone.cls.w": 0, "backbone.pos.w": 0, "backbone.blocks.0.w": 1, "backbone.blocks.1.w": 2,
                      "backbone.norm.w": 2, "pos.w": 3, "head.w": 3}  # (99999,): timm's "join the previous group"
    with pytest.raises(TypeError, match="dict format"):
        prefix_group_matcher(lambda name: 0, "backbone.")
