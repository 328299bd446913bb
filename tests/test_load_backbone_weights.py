"""segzoo.load_backbone_weights: published or local backbone weights into a model already
built (what the nnU-Net bridge does at the start of a run), LoRA adapters included."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import segzoo
from tests.checkpoint_layouts import meta_dinov3, source_vit
from tests.tiny_models import TINY_MIT

LORA = dict(r=4, alpha=8, dropout=0.0, target_modules=["qkv"])


def _checkpoint(tmp_path, backbone: str = "dinov3_small") -> tuple[torch.nn.Module, str]:
    source = source_vit(backbone)
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    return source, str(path)


def test_loads_what_create_model_loads(tiny, tmp_path, capsys):
    _, path = _checkpoint(tmp_path)
    built_with = segzoo.create_model("segformer_dinov3_small", num_classes=2, checkpoint_path=path, **tiny)
    model = segzoo.create_model("segformer_dinov3_small", num_classes=2, **tiny)
    report = segzoo.load_backbone_weights(model, checkpoint_path=path)
    assert isinstance(report, segzoo.LoadReport) and not report.missing and not report.unexpected
    assert "0 missing, 0 unexpected" in capsys.readouterr().out
    want = built_with.backbone.state_dict()
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, want[key], rtol=0, atol=0, msg=lambda m: f"{key}: {m}")


def test_lora_model_gets_the_weights_in_its_base_layers_and_keeps_its_adapters(tiny, tmp_path):
    source, path = _checkpoint(tmp_path)
    model = segzoo.create_model("segformer_dinov3_small", num_classes=2, lora=LORA, **tiny)
    with torch.no_grad():  # adapters and head with values of their own, which must survive the load
        for name, p in model.named_parameters():
            if "lora_" in name or name.startswith("decode_head."):
                p.add_(0.5)
    kept = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k or k.startswith("decode_head.")}

    segzoo.load_backbone_weights(model, checkpoint_path=path, verbose=False)

    state = model.state_dict()
    for key, value in kept.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=lambda m: f"{key}: {m}")
    base = state["backbone.model.blocks.0.attn.qkv.base_layer.weight"]
    torch.testing.assert_close(base, source.state_dict()["blocks.0.attn.qkv.weight"], rtol=0, atol=0)
    assert not model.backbone.model.blocks[0].attn.qkv.base_layer.weight.requires_grad  # still frozen


def test_original_layout_is_detected_as_in_create_model(tiny, tmp_path, capsys):
    source = source_vit("dinov3_base")
    torch.save(meta_dinov3(source.state_dict(), 2), tmp_path / "meta.pth")
    model = segzoo.create_model("segformer_dinov3_base", num_classes=2, **tiny)
    segzoo.load_backbone_weights(model, checkpoint_path=tmp_path / "meta.pth")
    assert "(dinov3)" in capsys.readouterr().out
    x = torch.randn(1, 3, 2 * model.patch_size, 2 * model.patch_size)
    reference = segzoo.create_model("segformer_dinov3_base", num_classes=2, checkpoint_path=tmp_path / "meta.pth",
                                    **tiny)
    with torch.no_grad():
        for got, want in zip(model.eval().backbone(x), reference.eval().backbone(x)):
            torch.testing.assert_close(got, want)


def test_a_bad_file_raises_and_leaves_the_model_as_it_was(tiny, tmp_path):
    source, _ = _checkpoint(tmp_path)
    state = source.state_dict()
    del state["blocks.1.attn.qkv.weight"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "partial.safetensors"))
    model = segzoo.create_model("segformer_dinov3_small", num_classes=2, **tiny)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(segzoo.CheckpointError, match=r"blocks\.1\.attn\.qkv\.weight"):
        segzoo.load_backbone_weights(model, checkpoint_path=tmp_path / "partial.safetensors")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=lambda m: f"{key}: {m}")


def test_offline_without_a_cached_file_says_what_to_do(tiny, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = segzoo.create_model("segformer_dinov3_small", num_classes=2, **tiny)
    with pytest.raises(segzoo.HubAccessError, match="checkpoint_path"):
        segzoo.load_backbone_weights(model)  # the model's default tag, from the Hub


def test_a_mit_model_loads_a_transformers_segformer_file(tmp_path):
    from transformers import SegformerForSemanticSegmentation

    from tests.tiny_models import segformer_reference_config

    model = segzoo.create_model("segformer_mit_b0", num_classes=2, **TINY_MIT).eval()
    source = SegformerForSemanticSegmentation(segformer_reference_config(model)).eval()
    source.save_pretrained(tmp_path / "segformer")
    report = segzoo.load_backbone_weights(model, checkpoint_path=tmp_path / "segformer")
    assert not report.missing and not report.unexpected
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = torch.nn.functional.interpolate(source(pixel_values=x).logits, size=(64, 64), mode="bilinear",
                                               align_corners=False)
        torch.testing.assert_close(model(x), want)


def test_a_module_that_is_no_zoo_model_is_named():
    with pytest.raises(TypeError, match="expects a zoo model"):
        segzoo.load_backbone_weights(torch.nn.Linear(2, 2), checkpoint_path="unused.safetensors")
