"""Bad input fails early, naming the problem and the fix."""

import pytest
import torch

import segzoo

from tests.tiny_models import tiny_kwargs


@pytest.fixture
def model(tiny):
    return segzoo.create_model("segformer_dinov3_base", num_classes=2, **tiny).eval()


@pytest.mark.parametrize("num_classes", [0, -1, 2.5, True])
def test_num_classes_must_be_positive_int(tiny, num_classes):
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
        segzoo.create_model("segformer_dinov3_base", num_classes=num_classes, **tiny)


def test_num_classes_required(tiny):
    with pytest.raises(ValueError, match="num_classes is required"):
        segzoo.create_model("segformer_dinov3_base", **tiny)


@pytest.mark.parametrize("in_chans", [0, -3])
def test_in_chans_must_be_positive(tiny, in_chans):
    with pytest.raises(ValueError, match="in_chans must be an integer >= 1"):
        segzoo.create_model("segformer_dinov3_base", num_classes=2, in_chans=in_chans, **tiny)


def test_unknown_neck(tiny):
    with pytest.raises(ValueError, match="Unknown neck 'fpn'"):
        segzoo.create_model("segformer_dinov3_base", num_classes=2, neck="fpn", **tiny)


def test_input_must_be_4d(model):
    with pytest.raises(ValueError, match=r"4-D input.*unsqueeze\(0\)"):
        model(torch.randn(3, 64, 64))


def test_input_channel_count(model):
    with pytest.raises(ValueError, match="expects 3 input channel.*got 1.*in_chans=1"):
        model(torch.randn(1, 1, 64, 64))


def test_input_smaller_than_a_patch(model):
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        model(torch.randn(1, 3, 15, 64))


def test_integer_input_rejected(model):
    with pytest.raises(TypeError, match=r"floating-point input, got torch.uint8.*x.float\(\)"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_pretrained_from_off_hub_source_points_to_checkpoint_path(tiny):
    with pytest.raises(ValueError, match="not on the Hugging Face Hub.*checkpoint_path"):
        segzoo.create_model("segformer_visionfm_base.fundus", pretrained=True, num_classes=2,
                            **tiny_kwargs("segformer_visionfm_base"))


def test_pretrained_gated_file_offline_and_uncached_points_to_checkpoint_path(tiny, tmp_path, monkeypatch):
    # conftest sets HF_HUB_OFFLINE=1: RETFound's gated .pth is not cached -> say how to proceed
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(segzoo.HubAccessError, match="RETFound_mae_natureCFP.*not in the Hugging Face cache.*checkpoint_path"):
        segzoo.create_model("segformer_retfound_large.cfp", pretrained=True, num_classes=2,
                            **tiny_kwargs("segformer_retfound_large"))


def test_an_empty_batch_is_named(tiny):
    model = segzoo.create_model("segformer_dinov3_small", num_classes=2, **tiny)
    with pytest.raises(ValueError, match="input batch is empty"):
        model(torch.randn(0, 3, 32, 32))


def test_compatibility_factory_requires_num_classes(tiny):
    with pytest.raises(ValueError, match="num_classes is required"):
        segzoo.create_segformer_model(backbone_name="dinov3", backbone_size="small", use_lora=False, **tiny)


def test_cli_prints_its_version(capsys):
    from segzoo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"segzoo {segzoo.__version__}"


def test_an_input_dtype_other_than_the_weights_is_named(tiny):
    model = segzoo.create_model("segformer_dinov3_small", num_classes=2, **tiny)
    with pytest.raises(TypeError, match=r"input dtype torch.float64 differs from the model's weights \(torch.float32\)"):
        model(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast decides the compute dtype: allowed
        assert model(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)).shape == (1, 2, 32, 32)
    model.to(torch.bfloat16)
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_integer_like_counts_are_accepted_and_floats_are_named(tiny):
    import numpy as np

    model = segzoo.create_model("segformer_dinov3_small", num_classes=np.int64(3), in_chans=torch.tensor(1), **tiny)
    assert (model.num_classes, model.in_chans) == (3, 1)
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 1 .*got 2\.0"):
        segzoo.create_model("segformer_dinov3_small", num_classes=2.0, **tiny)


@pytest.mark.parametrize("name, typo, meant", [
    ("segformer_dinov3_base", "freeze_backbon", "freeze_backbone"),
    ("segformer_dinov3_base", "num_class", "num_classes"),
    ("upernet_dinov3_base", "pool_scale", "pool_scales"),
    ("mask2former_dinov3_base", "num_querie", "num_queries"),
])
def test_an_unknown_keyword_is_named_with_the_closest_before_anything_is_built(tiny, monkeypatch, name, typo, meant):
    import segzoo.backbones.vit as vit

    def must_not_build(*args, **kwargs):
        raise AssertionError("the backbone was built before the keywords were checked")

    monkeypatch.setattr(vit, "create_backbone", must_not_build)
    with pytest.raises(TypeError, match=rf"create_model\('{name}'\) got unknown keyword argument '{typo}' "
                                        rf"\(did you mean '{meant}'\?\); {name} accepts: .*\b{meant}\b"):
        segzoo.create_model(name, pretrained=True, **{typo: 1}, **tiny)  # no download is attempted either


def test_a_keyword_of_another_head_is_named_without_a_guess(tiny):
    with pytest.raises(TypeError, match=r"unknown keyword argument 'num_queries'; segformer_dinov3_base accepts: "):
        segzoo.create_model("segformer_dinov3_base", num_classes=2, num_queries=10, **tiny)


def test_mit_names_an_unknown_keyword_and_an_unknown_encoder_field():
    from tests.tiny_models import TINY_MIT

    with pytest.raises(TypeError, match=r"unknown keyword argument 'freeze_backbon' \(did you mean 'freeze_backbone'"):
        segzoo.create_model("segformer_mit_b0", num_classes=2, freeze_backbon=True, **TINY_MIT)
    typo = dict(TINY_MIT, backbone_kwargs=dict(TINY_MIT["backbone_kwargs"], dephts=[1, 1, 1, 1]))
    with pytest.raises(ValueError, match=r"backbone_kwargs\['dephts'\] is not a MiT encoder field \(did you mean "
                                         r"'depths'\?\)"):
        segzoo.create_model("segformer_mit_b0", num_classes=2, **typo)
    own = dict(TINY_MIT, backbone_kwargs=dict(TINY_MIT["backbone_kwargs"], drop_path_rate=0.2))
    with pytest.raises(ValueError, match=r"set by create_model's own keyword: pass drop_path_rate=\.\.\. instead"):
        segzoo.create_model("segformer_mit_b0", num_classes=2, **own)


def test_an_unknown_pretrained_tag_lists_the_valid_ones():
    with pytest.raises(segzoo.UnknownModelError, match=r"Unknown pretrained tag 'nope' for 'segformer_dinov3_small'; "
                                                       r"valid tags: lvd1689m"):
        segzoo.create_model("segformer_dinov3_small.nope", num_classes=2)
    with pytest.raises(segzoo.UnknownModelError, match=r"'lvd1689' .*did you mean 'lvd1689m'\?"):
        segzoo.create_model("segformer_dinov3_small.lvd1689", num_classes=2)


def test_a_directory_as_checkpoint_path_is_named_with_the_files_in_it(tiny, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(IsADirectoryError, match=r"is a directory holding model\.safetensors: pass one of them"):
        segzoo.create_model("segformer_dinov3_small", num_classes=2, checkpoint_path=tmp_path, **tiny)


def test_without_network_the_cache_answers_at_once_and_the_advice_fits_the_request(tiny, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://hub.segzoo-test.invalid")  # never resolves
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(segzoo.HubAccessError, match=r"hub\.segzoo-test\.invalid does not resolve \(no network\?\); "
                                                    r"set HF_HUB_OFFLINE=1.*pass checkpoint_path="):
        segzoo.create_model("segformer_dinov3_small", pretrained=True, num_classes=2, **tiny)
    with pytest.raises(segzoo.HubAccessError, match="copy the saved model's folder") as saved_model:
        segzoo.create_model("hf-hub:someone/some-model")
    assert "checkpoint_path" not in str(saved_model.value)  # create_model refuses it for saved models


@pytest.mark.parametrize("name, timm_class", [("segformer_dinov3_small", "Eva"),
                                              ("upernet_dinov2_small", "VisionTransformer")])
def test_an_unknown_backbone_kwarg_is_named_with_the_closest_before_timm_builds(tiny, monkeypatch, name, timm_class):
    import segzoo.backbones.vit as vit

    def must_not_build(*args, **kwargs):
        raise AssertionError("timm was called before backbone_kwargs were checked")

    monkeypatch.setattr(vit.timm, "create_model", must_not_build)
    with pytest.raises(TypeError, match=rf"backbone_kwargs\['depht'\] is not an argument of \w+'s timm ViT "
                                        rf"\({timm_class}, vit_\w+\) \(did you mean 'depth'\?\); it accepts: "
                                        r".*\bembed_dim\b.*\bdepth\b"):
        segzoo.create_model(name, pretrained=True, num_classes=2, backbone_kwargs=dict(depht=2))  # no download either
    with pytest.raises(ValueError, match=r"backbone_kwargs\['in_chans'\] is set by create_model: pass in_chans=\.\.\."):
        segzoo.create_model(name, num_classes=2, backbone_kwargs=dict(tiny["backbone_kwargs"], in_chans=1))


def test_a_tag_given_twice_must_agree(tiny):
    model = segzoo.create_model("segformer_dinov3_large.sat493m", pretrained_tag="sat493m", num_classes=2,
                                backbone_kwargs=tiny["backbone_kwargs"])
    assert model.pretrained_cfg["tag"] == "sat493m" and model.model_kwargs["pretrained_tag"] == "sat493m"
    with pytest.raises(ValueError, match="names tag 'sat493m' but pretrained_tag='lvd1689m'; give one"):
        segzoo.create_model("segformer_dinov3_large.sat493m", pretrained_tag="lvd1689m", num_classes=2)
