"""UperNet on ViT backbones: parity with transformers' UperNet head, the zoo contract, errors."""

import pytest
import torch
import torch.nn.functional as F
from transformers import ConvNextConfig, UperNetConfig, UperNetForSemanticSegmentation

import segzoo


def test_head_matches_transformers_upernet_given_identical_features(tiny):
    model = segzoo.create_model("upernet_dinov3_base", num_classes=5, **tiny).eval()
    channels = model.neck.out_channels  # [16, 32, 64, 64] on the tiny ViT
    # a transformers UperNet whose (tiny ConvNeXt) backbone emits maps of those widths at strides 4-32
    stages = ["stage1", "stage2", "stage3", "stage4"]
    backbone = ConvNextConfig(hidden_sizes=channels, depths=[1, 1, 1, 1], out_features=stages)
    reference = UperNetForSemanticSegmentation(
        UperNetConfig(backbone_config=backbone, hidden_size=32, num_labels=5, use_auxiliary_head=False)
    ).eval()
    model.decode_head.load_state_dict(reference.decode_head.state_dict())
    pixels = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        features = list(reference.backbone(pixels).feature_maps)
        ours, theirs = model.decode_head(features), reference.decode_head(features)
        full = reference(pixel_values=pixels).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # the Segmenter's upsampling to the input size is transformers' too
    upsampled = F.interpolate(ours, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsampled, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,size", [("upernet_dinov3_small", (77, 50)), ("upernet_dinov2_base", (99, 130))])
def test_any_input_size(tiny, name, size):
    model = segzoo.create_model(name, num_classes=3, **tiny).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 3, *size)


def test_one_channel_same_stride_neck_and_width(tiny):
    model = segzoo.create_model("upernet_dinov3_base", num_classes=2, in_chans=1, neck="none", **tiny).eval()
    assert model.decode_head.channels == 32 and model.decode_head.classifier.in_channels == 32
    assert model.model_kwargs["decoder_hidden_size"] == 32 and model.model_kwargs["neck"] == "none"
    with torch.no_grad():
        assert model(torch.randn(1, 1, 48, 64)).shape == (1, 2, 48, 64)


def test_default_width_is_512():
    with torch.device("meta"):
        model = segzoo.create_model("upernet_dinov3_large", num_classes=3)
    assert model.decode_head.channels == 512 and tuple(model.decode_head.pool_scales) == (1, 2, 3, 6)


def test_trains_and_every_parameter_gets_a_gradient(tiny):
    model = segzoo.create_model("upernet_dinov2_small", num_classes=3, **tiny)
    model(torch.randn(2, 3, 56, 56)).sum().backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_batch_of_one_in_training_is_a_clear_error(tiny):
    model = segzoo.create_model("upernet_dinov2_small", num_classes=3, **tiny)
    with pytest.raises(ValueError, match="batch of 1.*batch size >= 2"):
        model(torch.randn(1, 3, 56, 56))


def test_bad_head_options(tiny):
    with pytest.raises(ValueError, match="pool_scales"):
        segzoo.create_model("upernet_dinov2_small", num_classes=3, pool_scales=(0, 2), **tiny)
    with pytest.raises(ValueError, match="decoder_hidden_size must be an integer >= 1"):
        segzoo.create_model("upernet_dinov2_small", num_classes=3, backbone_kwargs=tiny["backbone_kwargs"],
                            decoder_hidden_size=0)


def test_batch_of_one_trains_with_frozen_batch_norm_or_without_pool_scale_1(tiny):
    model = segzoo.create_model("upernet_dinov2_small", num_classes=3, **tiny).train()
    with pytest.raises(ValueError, match=r"psp_modules\.0.*leave scale 1 out of pool_scales=\(1, 2, 3, 6\) "
                                         r"\(e\.g\. pool_scales=\(2, 3, 6\)\)"):
        model(torch.randn(1, 3, 56, 56))
    # the usual workaround: BatchNorm in eval mode, everything else training
    model.apply(lambda m: m.eval() if isinstance(m, torch.nn.BatchNorm2d) else None)
    model(torch.randn(1, 3, 56, 56)).sum().backward()

    without_1 = segzoo.create_model("upernet_dinov2_small", num_classes=3, pool_scales=(2, 3, 6), **tiny).train()
    without_1(torch.randn(1, 3, 56, 56)).sum().backward()
    # a 1x1 coarsest map still leaves one value per channel in the bottleneck: named, without the pool_scales advice
    with pytest.raises(ValueError, match=r"one value per channel in bottleneck\. Ways out") as err:
        without_1(torch.randn(1, 3, 28, 28))  # 14-pixel patches: the pyramid's coarsest map is 1x1
    assert "pool_scales" not in str(err.value)
