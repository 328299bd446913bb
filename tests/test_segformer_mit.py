"""The original SegFormer (MiT-b0..b5): parity with transformers, checkpoint loading, contract."""

import pytest
import torch
import torch.nn.functional as F
from transformers import SegformerForImageClassification, SegformerForSemanticSegmentation, SegformerModel

import segzoo
from segzoo.backbones.mit_weights import load_transformers_segformer

from tests.tiny_models import TINY_MIT, TINY_VIT, segformer_reference_config


def _reference(model):
    """transformers' SegformerForSemanticSegmentation with the zoo model's configuration, fresh weights."""
    return SegformerForSemanticSegmentation(segformer_reference_config(model)).eval()


def _upsampled_reference_logits(reference, x):
    return F.interpolate(reference(pixel_values=x).logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _tiny_mit(num_classes=3, **kwargs):
    return segzoo.create_model("segformer_mit_b0", num_classes=num_classes, **TINY_MIT, **kwargs).eval()


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before):
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items()), "a refused load changed weights"


@pytest.mark.parametrize("size", [(64, 64), (67, 93)])
def test_saved_transformers_checkpoint_gives_transformers_logits_bit_exact(tmp_path, size, capsys):
    model = _tiny_mit()
    reference = _reference(model)
    reference.save_pretrained(tmp_path)  # transformers' saved layout (encoder.block.N..., decode_head.linear_c...)
    capsys.readouterr()
    report = load_transformers_segformer(model, tmp_path / "model.safetensors")
    assert isinstance(report, segzoo.LoadReport) and report.checkpoint_format == "transformers_segformer"
    assert report.loaded == sorted(model.state_dict()) and report.source == str(tmp_path / "model.safetensors")
    assert report.missing == report.unexpected == report.mismatched == report.dropped == []
    assert capsys.readouterr().out == f"{report}\n"  # the ViT loader's one-line report
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _upsampled_reference_logits(reference, x), atol=0, rtol=0)


def test_in_memory_state_dict_and_folder_load(tmp_path, capsys):
    model = segzoo.create_model("segformer_mit_b1", num_classes=2, **TINY_MIT).eval()
    reference = _reference(model)
    load_transformers_segformer(model, reference.state_dict(), verbose=False)  # the module layout of transformers >= 5
    assert capsys.readouterr().out == ""
    x = torch.randn(1, 3, 40, 72)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _upsampled_reference_logits(reference, x), atol=0, rtol=0)
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")  # a folder with a pickled checkpoint
    report = load_transformers_segformer(model, tmp_path)
    assert report.missing == [] and report.source == str(tmp_path / "pytorch_model.bin")


def test_encoder_only_imagenet_checkpoint(tmp_path):
    model = _tiny_mit(num_classes=4)
    classifier = SegformerForImageClassification(model.backbone.model.config).eval()
    classifier.save_pretrained(tmp_path)
    report = load_transformers_segformer(model, tmp_path / "model.safetensors")
    assert report.dropped == ["classifier.bias", "classifier.weight"]  # the ImageNet head
    assert report.missing and all(k.startswith("decode_head.") for k in report.missing)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = model.backbone(x)[-1]
        theirs = classifier.segformer(x).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


def test_encoder_only_segformer_model_file_reports_loaded_and_missing(tmp_path, capsys):
    model = _tiny_mit()
    encoder = SegformerModel(model.backbone.model.config).eval()
    encoder.save_pretrained(tmp_path)  # a bare SegformerModel file: encoder.* keys, no prefix
    head_before = _snapshot(model.decode_head)
    capsys.readouterr()
    report = load_transformers_segformer(model, tmp_path)
    assert isinstance(report, segzoo.LoadReport)
    assert len(report.loaded) == len(encoder.state_dict())
    assert all(k.startswith("backbone.model.") for k in report.loaded)
    head_weights = [f"decode_head.{k}" for k in model.decode_head.state_dict() if not k.endswith("num_batches_tracked")]
    assert report.missing == head_weights  # left as initialised, not an error
    assert report.unexpected == report.mismatched == report.dropped == []
    _assert_unchanged(model.decode_head, head_before)
    line = capsys.readouterr().out
    assert line == f"{report}\n"
    assert f"{len(encoder.state_dict())} tensors loaded, {len(head_weights)} missing (left as initialised)" in line
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(model.backbone(x)[-1], encoder(x).last_hidden_state, atol=0, rtol=0)


def test_one_channel_model_adapts_the_rgb_patch_filters(tmp_path):
    model = _tiny_mit(in_chans=1)
    reference = _reference(_tiny_mit())
    report = load_transformers_segformer(model, reference.state_dict())
    assert report.adapted == ["segformer.stages.0.patch_embeddings.proj.weight 3 -> 1 channels"]
    weight = model.backbone.model.stages[0].patch_embeddings.proj.weight
    torch.testing.assert_close(weight[:, 0], reference.segformer.stages[0].patch_embeddings.proj.weight.sum(1))
    assert len(model.pretrained_cfg["mean"]) == 1
    assert model(torch.randn(1, 1, 50, 45)).shape == (1, 3, 50, 45)


def test_other_class_count_keeps_own_classifier_or_says_how():
    fine_tuned = _reference(_tiny_mit(num_classes=5)).state_dict()
    model = _tiny_mit(num_classes=2)
    before = _snapshot(model)
    with pytest.raises(segzoo.CheckpointError,
                       match=r"decode_head\.classifier\.weight: checkpoint \(5, 32, 1, 1\) vs model \(2, 32, 1, 1\)"
                             r".*num_classes or load with include_classifier=False"):
        load_transformers_segformer(model, fine_tuned)
    _assert_unchanged(model, before)
    report = load_transformers_segformer(model, fine_tuned, include_classifier=False)
    assert report.missing == ["decode_head.classifier.weight", "decode_head.classifier.bias"]
    assert report.dropped == ["decode_head.classifier.weight", "decode_head.classifier.bias"]


def test_wrong_shape_and_unexpected_keys_are_named_and_nothing_loads():
    model = _tiny_mit()
    state = _reference(model).state_dict()
    state["segformer.stages.1.blocks.0.mlp.fc1.weight"] = torch.zeros(7, 32)
    state["segformer.stages.0.blocks.5.mlp.fc1.weight"] = torch.zeros(64, 16)  # a block this depth lacks
    state["auxiliary_head.weight"] = torch.zeros(3)
    before = _snapshot(model)
    with pytest.raises(segzoo.CheckpointError) as err:
        load_transformers_segformer(model, state)
    message = str(err.value)
    assert message.startswith("refusing a partial load of <state dict> (transformers_segformer layout)")
    assert "1 shape mismatches: segformer.stages.1.blocks.0.mlp.fc1.weight: checkpoint (7, 32) vs model" in message
    assert ("2 file weights the model has no place for: segformer.stages.0.blocks.5.mlp.fc1.weight, "
            "auxiliary_head.weight") in message
    assert "Check the MiT size" in message
    _assert_unchanged(model, before)


def test_checkpoint_of_another_size_is_refused():
    b0 = _reference(segzoo.create_model("segformer_mit_b0", num_classes=2, **TINY_MIT)).state_dict()
    wider_sizes = dict(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 2])
    wider = segzoo.create_model("segformer_mit_b0", num_classes=2, decoder_hidden_size=32, backbone_kwargs=wider_sizes)
    with pytest.raises(segzoo.CheckpointError, match=r"shape mismatches: .*Check the MiT size"):
        load_transformers_segformer(wider, b0)
    deeper = segzoo.create_model("segformer_mit_b0", num_classes=2, decoder_hidden_size=32, backbone_kwargs=dict(
        hidden_sizes=[16, 32, 32, 64], depths=[1, 1, 2, 1], num_attention_heads=[1, 1, 1, 2]))
    # still a ValueError, for callers that caught the loader's errors before CheckpointError
    with pytest.raises(ValueError, match=r"model weights missing from the file: backbone\.model\.stages\.2\.blocks\.1\."):
        load_transformers_segformer(deeper, b0)
    with pytest.raises(TypeError, match="segformer_mit"):
        load_transformers_segformer(segzoo.create_model("segformer_dinov3_small", num_classes=2,
                                                        backbone_kwargs=dict(TINY_VIT)), b0)


def test_whole_segzoo_model_is_not_a_transformers_checkpoint(tmp_path):
    segzoo.save_pretrained(_tiny_mit(), tmp_path)
    with pytest.raises(segzoo.CheckpointError, match=r"whole segzoo model.*segzoo\.create_model\('<folder"):
        segzoo.create_model("segformer_mit_b0", num_classes=3, checkpoint_path=tmp_path, **TINY_MIT)
    with pytest.raises(segzoo.CheckpointError, match="whole segzoo model"):
        load_transformers_segformer(_tiny_mit(), tmp_path / "model.safetensors")


def test_training_container_and_empty_folder_are_named(tmp_path):
    state = _reference(_tiny_mit()).state_dict()
    with pytest.raises(segzoo.CheckpointError, match=r"entries epoch, state_dict are not tensors.*checkpoint\['state_dict'\]"):
        load_transformers_segformer(_tiny_mit(), {"epoch": 3, "state_dict": state})
    with pytest.raises(FileNotFoundError, match="holds neither model.safetensors nor pytorch_model.bin"):
        load_transformers_segformer(_tiny_mit(), tmp_path)


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
            width = model.decode_head.config.decoder_hidden_size
            architecture = (list(config.hidden_sizes), list(config.depths), width)
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
    assert city.checkpoint_format == "transformers_segformer" and city.num_classes == 19


def test_fine_tuned_tag_sets_class_count_and_rebuild_kwargs():
    with torch.device("meta"):
        model = segzoo.create_model("segformer_mit_b0.ade20k")
    assert model.num_classes == 150 and model.pretrained_cfg["tag"] == "ade20k"
    assert model.model_name == "segformer_mit_b0" and model.model_kwargs["pretrained_tag"] == "ade20k"


def test_create_model_loads_a_transformers_file_through_checkpoint_path(tmp_path, capsys):
    source = segzoo.create_model("segformer_mit_b0", num_classes=3, **TINY_MIT).eval()
    reference = _reference(source)
    reference.save_pretrained(tmp_path)
    capsys.readouterr()
    model = segzoo.create_model("segformer_mit_b0", num_classes=3, checkpoint_path=tmp_path / "model.safetensors",
                                **TINY_MIT).eval()
    loaded = len(model.state_dict())
    assert capsys.readouterr().out == (
        f"segzoo: loaded {tmp_path / 'model.safetensors'} (transformers_segformer): {loaded} tensors loaded, "
        "0 missing, 0 unexpected, 0 unused by segmentation, 0 pre-training only dropped\n")
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _upsampled_reference_logits(reference, x), atol=0, rtol=0)
    # another class count: everything but the final classifier loads, and the report says so
    other = segzoo.create_model("segformer_mit_b0", num_classes=2, checkpoint_path=tmp_path, **TINY_MIT)
    out = capsys.readouterr().out
    assert f"{loaded - 2} tensors loaded, 2 missing (left as initialised)" in out
    assert out.endswith("; classifier re-initialised for 2 classes\n")
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


@pytest.mark.parametrize("option, value, why", [
    ("feature_indices", [0, 1, 2, 3], "its four stages are the features"),
    ("img_size", 64, "it takes any input size as it is"),
])
def test_vit_only_options_are_refused_naming_why(option, value, why):
    with pytest.raises(ValueError, match=rf"mit_b0 is a hierarchical encoder and takes no {option} \({why}\)"):
        segzoo.create_model("segformer_mit_b0", num_classes=2, **TINY_MIT, **{option: value})
