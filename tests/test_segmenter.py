import pytest
import torch
import torch.nn.functional as F

import segzoo


@pytest.mark.parametrize("size", [(224, 224), (512, 512), (333, 517), (16, 16)])
def test_logits_match_any_input_size(tiny, size):
    model = segzoo.create_model("segformer_dinov3_base", num_classes=4, **tiny).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, *size))
    assert y.shape == (1, 4, *size) and y.dtype == torch.float32 and torch.isfinite(y).all()


@pytest.mark.parametrize("neck", ["pyramid", "none"])
def test_patch14_backbone_non_multiple_size_and_batch(tiny, neck):
    model = segzoo.create_model("segformer_dinov2_small", num_classes=2, neck=neck, **tiny).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 99, 130))
    assert y.shape == (2, 2, 99, 130)


def test_pyramid_gives_strides_4_to_32(tiny):
    model = segzoo.create_model("segformer_dinov3_base", num_classes=2, **tiny)
    x = torch.randn(1, 3, 256, 256)
    feats = model.neck(model.backbone(x))
    assert [f.shape[-1] for f in feats] == [64, 32, 16, 8]
    assert [f.shape[1] for f in feats] == model.neck.out_channels == [16, 32, 64, 64]
    same = segzoo.create_model("segformer_dinov3_base", num_classes=2, neck="none", **tiny)
    assert [f.shape[-1] for f in same.neck(same.backbone(x))] == [16, 16, 16, 16]


@pytest.mark.parametrize("name", ["segformer_dinov3_base", "segformer_dinov2_small"])  # patch 16 (RoPE), 14
def test_non_multiple_input_is_zero_padded_bottom_right_and_cropped_top_left(tiny, name):
    # Attention is global, so the padded pixels do reach the visible logits; what the model
    # guarantees is a fixed rule: zeros on the bottom/right up to a multiple of the patch size,
    # then the top-left H x W of the logits. The output is therefore exactly the crop of the
    # output of the input padded explicitly by that rule.
    model = segzoo.create_model(name, num_classes=3, **tiny).eval()
    height, width = 40, 50
    pad_h, pad_w = -height % model.pad_multiple, -width % model.pad_multiple
    assert pad_h and pad_w  # the test needs both sides padded
    x = torch.randn(1, 3, height, width)
    with torch.no_grad():
        logits = model(x)
        padded = model(F.pad(x, (0, pad_w, 0, pad_h)))
        replicated = model(F.pad(x, (0, pad_w, 0, pad_h), mode="replicate"))
        top_left = model(F.pad(x, (pad_w, 0, pad_h, 0)))
    assert logits.shape == (1, 3, height, width)
    assert padded.shape == (1, 3, height + pad_h, width + pad_w)
    torch.testing.assert_close(logits, padded[..., :height, :width], rtol=0, atol=0)
    # the rule is discriminating: other padding content or placement gives other logits
    assert not torch.allclose(logits, replicated[..., :height, :width], atol=1e-3)
    assert not torch.allclose(logits, top_left[..., pad_h:, pad_w:], atol=1e-3)


def test_one_channel_model(tiny):
    model = segzoo.create_model("segformer_dinov2_base", num_classes=2, in_chans=1, **tiny).eval()
    assert model.backbone.model.patch_embed.proj.in_channels == 1
    assert len(model.pretrained_cfg["mean"]) == 1
    assert model(torch.randn(1, 1, 70, 70)).shape == (1, 2, 70, 70)


@pytest.mark.parametrize("name, in_chans", [("segformer_dinov3_small", 3), ("eomt_dinov3_small", 3),
                                             ("segformer_dinov3_small", 1)])
def test_a_channels_last_input_is_named_as_such(tiny, name, in_chans):
    kwargs = dict(backbone_kwargs=tiny["backbone_kwargs"]) if name.startswith("eomt_") else tiny
    model = segzoo.create_model(name, num_classes=2, in_chans=in_chans, **kwargs).eval()
    image = torch.randn(2, 64, 48, in_chans)
    with pytest.raises(ValueError, match=rf"\(2, 64, 48, {in_chans}\) looks channels-last.*x.permute\(0, 3, 1, 2\)"):
        model(image)
    with torch.no_grad():
        assert model(image.permute(0, 3, 1, 2)).shape == (2, 2, 64, 48)
    # a real channel-count mismatch still suggests in_chans
    with pytest.raises(ValueError, match=f"expects {in_chans} input channel.*in_chans=5"):
        model(torch.randn(2, 5, 64, 48))


def test_feature_indices_choose_blocks_and_prune_the_rest():
    model = segzoo.create_model(
        "segformer_dinov3_base", num_classes=2, backbone_kwargs=dict(depth=6, embed_dim=64, num_heads=2),
        feature_indices=[0, 1, 2, 3],
    )
    assert model.backbone.depth == 4  # blocks after the last feature layer are never run, so not kept
    with pytest.raises(ValueError, match=r"must lie in \[0, 5\]"):
        segzoo.create_model("segformer_dinov3_base", num_classes=2,
                            backbone_kwargs=dict(depth=6, embed_dim=64, num_heads=2), feature_indices=[0, 9])


def test_every_parameter_gets_a_gradient(tiny):
    # no frozen-but-trainable leftovers: DDP without find_unused_parameters needs this
    model = segzoo.create_model("segformer_dinov3_base", num_classes=3, **tiny)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_freeze_backbone_and_parameter_report(tiny, capsys):
    model = segzoo.create_model("segformer_dinov3_base", num_classes=3, freeze_backbone=True, **tiny)
    counts = model.count_parameters()
    assert counts["backbone"][0] == 0 and counts["backbone"][1] > 0
    assert counts["decode_head"][0] == counts["decode_head"][1] > 0
    model.print_trainable_parameters(detailed=True)
    out = capsys.readouterr().out
    assert "trainable params:" in out and "backbone:" in out and "neck:" in out and "decode_head:" in out
    model.freeze_backbone(False)
    assert model.count_parameters()["backbone"][0] == counts["backbone"][1]


def test_gradient_checkpointing_same_gradients(tiny):
    # eval(): dropout and DINOv3's RoPE jitter are random in train mode
    model = segzoo.create_model("segformer_dinov3_base", num_classes=2, **tiny).eval()
    x = torch.randn(1, 3, 64, 64)
    model(x).sum().backward()
    ref = model.backbone.model.blocks[0].attn.qkv.weight.grad.clone()
    model.zero_grad()
    model.set_grad_checkpointing(True)
    assert model.backbone.model.grad_checkpointing
    model(x).sum().backward()
    torch.testing.assert_close(model.backbone.model.blocks[0].attn.qkv.weight.grad, ref)


def test_model_records_how_to_rebuild(tiny):
    model = segzoo.create_model("segformer_dinov3_large.sat493m", num_classes=5, neck="none", **tiny)
    assert model.model_name == "segformer_dinov3_large"
    assert model.model_kwargs["num_classes"] == 5 and model.model_kwargs["neck"] == "none"
    assert model.model_kwargs["pretrained_tag"] == "sat493m"
    assert model.pretrained_cfg["tag"] == "sat493m" and model.pretrained_cfg["mean"][2] == pytest.approx(0.296)


@pytest.mark.parametrize("size", [(1, 1), (3, 4), (5, 7), (8, 8)])
def test_pyramid_halving_keeps_ceil_mode_results(size):
    from segzoo.necks.pyramid import HalveMaxPool

    x = torch.randn(2, 4, *size)
    expected = torch.nn.functional.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
    torch.testing.assert_close(HalveMaxPool()(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["segformer_mit_b0", "segformer_dinov3_small"])
def test_a_frozen_backbone_trains_without_stochastic_depth(tiny, name):
    from tests.tiny_models import TINY_MIT

    kwargs = dict(TINY_MIT) if "mit" in name else dict(tiny)
    model = segzoo.create_model(name, num_classes=2, drop_path_rate=0.3, freeze_backbone=True, **kwargs).train()
    assert not model.backbone.training and model.decode_head.training
    x = torch.randn(2, 3, 64, 64)
    first, second = model.backbone(x), model.backbone(x)  # no random drop: the same features twice
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)
    model.freeze_backbone(False)
    assert model.backbone.training and any(p.requires_grad for p in model.backbone.parameters())
    model.eval().train()
    assert model.backbone.training
