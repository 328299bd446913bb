"""DPT on ViT backbones: parity with transformers' DPT neck and head, the zoo contract, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import DPTConfig
from transformers.models.dpt.modeling_dpt import DPTNeck, DPTSemanticSegmentationHead

import segzoo
from segzoo.necks import DPTReassemble
from tests.checkpoint_layouts import source_vit
from tests.tiny_models import tiny_kwargs


def _reference(model: segzoo.Segmenter) -> tuple[DPTNeck, DPTSemanticSegmentationHead]:
    """transformers' DPTNeck + segmentation head of the model's widths, random weights and
    BatchNorm statistics, with the zoo model's DPT layers set to the same values."""
    head = model.decode_head
    config = DPTConfig(hidden_size=model.backbone.embed_dim, neck_hidden_sizes=model.neck.out_channels,
                       reassemble_factors=[4, 2, 1, 0.5], fusion_hidden_size=head.config.fusion_hidden_size,
                       readout_type="ignore", num_labels=head.config.num_labels)
    neck, seg_head = DPTNeck(config).eval(), DPTSemanticSegmentationHead(config).eval()
    with torch.no_grad():
        for tensor in [*neck.parameters(), *seg_head.parameters(), *seg_head.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) * 0.2 + (0.5 if tensor.ndim == 1 else -0.1))
    state = neck.state_dict()
    model.neck.load_state_dict({k.removeprefix("reassemble_stage."): v for k, v in state.items()
                                if k.startswith("reassemble_stage.")})
    unused = "fusion_stage.layers.0.residual_layer1."  # never runs in transformers either: the zoo drops it
    ours = {k: v for k, v in state.items() if not k.startswith(("reassemble_stage.", unused))}
    ours.update({f"head.{k}": v for k, v in seg_head.state_dict().items()})
    head.load_state_dict(ours)
    return neck, seg_head


@pytest.mark.parametrize("name,size", [("dpt_dinov3_base", (64, 96)), ("dpt_dinov2_small", (70, 42))])
def test_neck_and_head_match_transformers_dpt_given_the_same_vit_tokens(tiny, name, size):
    model = segzoo.create_model(name, num_classes=5, **tiny).eval()
    neck, seg_head = _reference(model)
    pixels = torch.randn(2, 3, *size)
    with torch.no_grad():
        maps = model.backbone(pixels)
        # transformers' DPT takes token sequences with the class token first (here: ignored)
        height, width = maps[0].shape[-2:]
        tokens = [torch.cat([torch.randn(2, 1, m.shape[1]), m.flatten(2).transpose(1, 2)], dim=1) for m in maps]
        theirs = seg_head(neck(tokens, patch_height=height, patch_width=width))
        ours = model.decode_head(model.neck(maps))
        full = model(pixels)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # the Segmenter's resampling to the input size (exact for patch 16, 0.875x for patch 14)
    upsampled = F.interpolate(theirs, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(full, upsampled, atol=1e-5, rtol=0)


def test_dpt_large_widths_are_the_published_ones():
    with torch.device("meta"):
        model = segzoo.create_model("dpt_dinov3_large", num_classes=3)
    assert model.neck.out_channels == [256, 512, 1024, 1024]  # DPT-Large's reassemble widths
    assert model.decode_head.config.fusion_hidden_size == 256
    assert [info["reduction"] for info in model.feature_info] == [4, 8, 16, 32]


@pytest.mark.parametrize("name,size", [("dpt_dinov3_small", (77, 50)), ("dpt_dinov2_base", (99, 130)),
                                       ("dpt_visionfm_base", (16, 16))])  # the last: one patch
def test_any_input_size(tiny, name, size):
    model = segzoo.create_model(name, num_classes=3, **tiny_kwargs(name)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 3, *size)


@pytest.mark.parametrize("neck", ["pyramid", "none"])
def test_other_necks_and_one_channel(tiny, neck):
    model = segzoo.create_model("dpt_dinov3_base", num_classes=2, in_chans=1, neck=neck, **tiny).eval()
    assert model.model_kwargs["neck"] == neck and model.in_chans == 1
    with torch.no_grad():
        assert model(torch.randn(1, 1, 48, 64)).shape == (1, 2, 48, 64)


def test_trains_with_a_batch_of_one_and_every_parameter_gets_a_gradient(tiny):
    model = segzoo.create_model("dpt_dinov2_small", num_classes=3, **tiny).train()
    model(torch.randn(1, 3, 28, 42)).sum().backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_lora_freezing_and_checkpointing(tiny):
    model = segzoo.create_model("dpt_dinov3_small", num_classes=3, lora=dict(r=4), grad_checkpointing=True, **tiny)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_" in n for n in trainable if n.startswith("backbone."))
    model(torch.randn(2, 3, 32, 48)).sum().backward()
    assert all(model.get_parameter(n).grad is not None for n in trainable)

    frozen = segzoo.create_model("dpt_dinov3_small", num_classes=3, freeze_backbone=True, **tiny).train()
    assert not any(p.requires_grad for p in frozen.backbone.parameters()) and not frozen.backbone.training
    assert all(p.requires_grad for p in frozen.decode_head.parameters())


def test_backbone_weights_load_and_the_model_saves_and_reloads(tiny, tmp_path):
    source = source_vit("dinov2_small")
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = segzoo.create_model("dpt_dinov2_small", num_classes=3, checkpoint_path=str(path), **tiny).eval()
    torch.testing.assert_close(model.backbone.model.patch_embed.proj.weight, source.patch_embed.proj.weight)

    reloaded = segzoo.create_model(str(segzoo.save_pretrained(model, tmp_path / "saved"))).eval()
    x = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x), atol=0, rtol=0)
    assert segzoo.get_pretrained_cfg("dpt_dinov2_small").hf_hub_id == "timm/vit_small_patch14_dinov2.lvd142m"


def test_get_and_reset_classifier(tiny):
    model = segzoo.create_model("dpt_dinov3_small", num_classes=3, **tiny)
    classifier = model.get_classifier()
    assert isinstance(classifier, nn.Conv2d) and classifier.out_channels == 3 and classifier.kernel_size == (1, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_classifier(6)
    assert model.get_classifier().out_channels == 6 and model.decode_head.config.num_labels == 6
    assert model.num_classes == 6 and model.model_kwargs["num_classes"] == 6
    after = model.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(after[k], v)]
    assert changed == ["decode_head.head.head.4.weight", "decode_head.head.head.4.bias"]
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 6, 32, 32)


def test_bad_options_are_named(tiny):
    with pytest.raises(ValueError, match="decoder_hidden_size must be an integer >= 1"):
        segzoo.create_model("dpt_dinov3_small", num_classes=3, backbone_kwargs=tiny["backbone_kwargs"],
                            decoder_hidden_size=0)
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\)"):
        segzoo.create_model("dpt_dinov3_small", num_classes=3, dropout=1.5, **tiny)
    with pytest.raises(ValueError, match="four equally wide maps of a plain ViT.*neck='pyramid'"):
        DPTReassemble([16, 32, 64, 64])
