import pytest
import torch

import segzoo
from tests.tiny_models import TINY_MIT
from segzoo.optim import param_groups

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
