"""The original SegFormer (MiT-b0..b5): parity with transformers, checkpoint loading, contract."""

import pytest
import torch
import torch.nn.functional as F
from transformers import SegformerForImageClassification, SegformerForSemanticSegmentation

import segzoo
from segzoo.models.segformer_mit import load_transformers_segformer

from tests.tiny_models import TINY_MIT, TINY_VIT


def _reference(model):
    """transformers' SegformerForSemanticSegmentation with the zoo model's configuration, fresh weights."""
    return SegformerForSemanticSegmentation(model.backbone.model.config).eval()


def _upsampled_reference_logits(reference, x):
    return F.interpolate(reference(pixel_values=x).logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("size", [(64, 64), (67, 93)])
def test_saved_transformers_checkpoint_gives_transformers_logits(tmp_path, size):
    model = segzoo.create_model("segformer_mit_b0", num_classes=3, **TINY_MIT).eval()
    reference = _reference(model)
    reference.save_pretrained(tmp_path)  # transformers' saved layout (encoder.block.N..., decode_head.linear_c...)
    report = load_transformers_segformer(model, tmp_path / "model.safetensors")
    assert report.missing == [] and report.ignored == [] and len(report.loaded) > 100
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _upsampled_reference_logits(reference, x), atol=1e-5, rtol=0)


def test_in_memory_state_dict_and_folder_load(tmp_path):
    model = segzoo.create_model("segformer_mit_b1", num_classes=2, **TINY_MIT).eval()
    reference = _reference(model)
    load_transformers_segformer(model, reference.state_dict())  # the module layout of transformers >= 5
    x = torch.randn(1, 3, 40, 72)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _upsampled_reference_logits(reference, x), atol=1e-5, rtol=0)
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")  # a folder with a pickled checkpoint
    assert load_transformers_segformer(model, tmp_path).missing == []


def test_encoder_only_imagenet_checkpoint(tmp_path):
    model = segzoo.create_model("segformer_mit_b0", num_classes=4, **TINY_MIT).eval()
    classifier = SegformerForImageClassification(model.backbone.model.config).eval()
    classifier.save_pretrained(tmp_path)
    report = load_transformers_segformer(model, tmp_path / "model.safetensors")
    assert report.ignored == ["classifier.bias", "classifier.weight"]  # the ImageNet head
    assert report.missing and all(k.startswith("decode_head.") for k in report.missing)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = model.backbone(x)[-1]
        theirs = classifier.segformer(x).last_hidden_state
    torch.testing.assert_close(ours, theirs)


def test_one_channel_model_adapts_the_rgb_patch_filters(tmp_path):
    model = segzoo.create_model("segformer_mit_b0", num_classes=3, in_chans=1, **TINY_MIT).eval()
    rgb = segzoo.create_model("segformer_mit_b0", num_classes=3, **TINY_MIT)
    reference = _reference(rgb)
    load_transformers_segformer(model, reference.state_dict())
    weight = model.backbone.model.stages[0].patch_embeddings.proj.weight
    torch.testing.assert_close(weight[:, 0], reference.segformer.stages[0].patch_embeddings.proj.weight.sum(1))
    assert len(model.pretrained_cfg["mean"]) == 1
    assert model(torch.randn(1, 1, 50, 45)).shape == (1, 3, 50, 45)


def test_other_class_count_keeps_own_classifier_or_says_how():
    fine_tuned = _reference(segzoo.create_model("segformer_mit_b0", num_classes=5, **TINY_MIT)).state_dict()
    model = segzoo.create_model("segformer_mit_b0", num_classes=2, **TINY_MIT)
    with pytest.raises(ValueError, match="num_classes or load with include_classifier=False"):
        load_transformers_segformer(model, fine_tuned)
    report = load_transformers_segformer(model, fine_tuned, include_classifier=False)
    assert report.missing == ["decode_head.classifier.weight", "decode_head.classifier.bias"]


def test_checkpoint_of_another_size_is_refused():
    b0 = _reference(segzoo.create_model("segformer_mit_b0", num_classes=2, **TINY_MIT)).state_dict()
    wider_sizes = dict(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 2])
    wider = segzoo.create_model("segformer_mit_b0", num_classes=2, decoder_hidden_size=32, backbone_kwargs=wider_sizes)
    with pytest.raises(ValueError, match="check the MiT size"):
        load_transformers_segformer(wider, b0)
    deeper = segzoo.create_model("segformer_mit_b0", num_classes=2, decoder_hidden_size=32, backbone_kwargs=dict(
        hidden_sizes=[16, 32, 32, 64], depths=[1, 1, 2, 1], num_attention_heads=[1, 1, 1, 2]))
    with pytest.raises(ValueError, match="lacks .* weights"):
        load_transformers_segformer(deeper, b0)
    with pytest.raises(TypeError, match="segformer_mit"):
        load_transformers_segformer(segzoo.create_model("segformer_dinov3_small", num_classes=2,
                                                        backbone_kwargs=dict(TINY_VIT)), b0)


def test_any_size_without_padding_and_minimum_size():
    model = segzoo.create_model("segformer_mit_b0", num_classes=3, **TINY_MIT).eval()
    assert model.pad_multiple == 1 and model.min_input_size == 32 and model.patch_size == 4
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 111)).shape == (2, 3, 32, 111)
    with pytest.raises(ValueError, match="smaller than the 32x32 minimum of the backbone"):
        model(torch.randn(1, 3, 31, 64))


def test_full_size_configs_on_meta():
    expected = {"b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256), "b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768),
                "b5": ([64, 128, 320, 512], [3, 6, 40, 3], 768)}
    for name in segzoo.list_models("segformer_mit_*"):
        with torch.device("meta"):
            model = segzoo.create_model(name, num_classes=3)
        config = model.backbone.model.config
        assert model.decode_head.classifier.out_channels == 3
        if name[-2:] in expected:
            architecture = (list(config.hidden_sizes), list(config.depths), config.decoder_hidden_size)
            assert architecture == expected[name[-2:]]
    assert segzoo.list_models("segformer_mit_*") == [f"segformer_mit_b{i}" for i in range(6)]


def test_pretrained_tags_point_at_the_published_hub_repos():
    assert segzoo.list_pretrained("segformer_mit_b5*") == [
        "segformer_mit_b5.ade20k", "segformer_mit_b5.cityscapes", "segformer_mit_b5.in1k"]
    assert segzoo.get_pretrained_cfg("segformer_mit_b0").hf_hub_id == "nvidia/mit-b0"
    assert segzoo.get_pretrained_cfg("segformer_mit_b2.ade20k").hf_hub_id == "nvidia/segformer-b2-finetuned-ade-512-512"
    assert segzoo.get_pretrained_cfg("segformer_mit_b5.ade20k").hf_hub_id == "nvidia/segformer-b5-finetuned-ade-640-640"
    city = segzoo.get_pretrained_cfg("segformer_mit_b3.cityscapes")
    assert city.hf_hub_id == "nvidia/segformer-b3-finetuned-cityscapes-1024-1024"
    assert city.checkpoint_format == "transformers_segformer" and city.extra["num_classes"] == 19


def test_fine_tuned_tag_sets_class_count_and_rebuild_kwargs():
    with torch.device("meta"):
        model = segzoo.create_model("segformer_mit_b0.ade20k")
    assert model.num_classes == 150 and model.pretrained_cfg["tag"] == "ade20k"
    assert model.model_name == "segformer_mit_b0" and model.model_kwargs["pretrained_tag"] == "ade20k"


def test_create_model_loads_a_transformers_file_through_checkpoint_path(tmp_path, capsys):
    source = segzoo.create_model("segformer_mit_b0", num_classes=3, **TINY_MIT).eval()
    reference = _reference(source)
    reference.save_pretrained(tmp_path)
    model = segzoo.create_model("segformer_mit_b0", num_classes=3, checkpoint_path=tmp_path / "model.safetensors",
                                **TINY_MIT).eval()
    assert "0 left as initialised" in capsys.readouterr().out
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _upsampled_reference_logits(reference, x), atol=1e-5, rtol=0)
    # another class count: everything but the final classifier loads, and the report says so
    other = segzoo.create_model("segformer_mit_b0", num_classes=2, checkpoint_path=tmp_path, **TINY_MIT)
    assert "classifier re-initialised for 2 classes" in capsys.readouterr().out
    torch.testing.assert_close(other.decode_head.linear_fuse.weight, reference.decode_head.linear_fuse.weight)


def test_corrupted_transformers_file_is_named(tmp_path):
    reference = _reference(segzoo.create_model("segformer_mit_b0", num_classes=2, **TINY_MIT))
    reference.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(segzoo.CheckpointError, match=r"model\.safetensors.*truncated or corrupted"):
        segzoo.create_model("segformer_mit_b0", num_classes=2, checkpoint_path=weights, **TINY_MIT)


def test_errors_name_the_fix():
    # offline (the test default) and not cached: the Hub error names the checkpoint_path way
    with pytest.raises(OSError, match="checkpoint_path"):
        segzoo.create_model("segformer_mit_b0", pretrained=True, num_classes=2)
    with pytest.raises(ValueError, match="takes no neck"):
        segzoo.create_model("segformer_mit_b0", num_classes=2, neck="pyramid")
    with pytest.raises(ValueError, match="num_classes is required"):
        segzoo.create_model("segformer_mit_b0")


def test_training_switches():
    model = segzoo.create_model("segformer_mit_b0", num_classes=2, freeze_backbone=True, grad_checkpointing=True,
                                **TINY_MIT)
    assert model.count_parameters()["backbone"][0] == 0
    assert model.backbone.grad_checkpointing
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.decode_head.parameters())
