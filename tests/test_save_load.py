"""Whole-model save / reload from a local folder: config.json + model.safetensors + model card."""

from __future__ import annotations

import json

import huggingface_hub
import pytest
import torch
from torch import nn

import segzoo

from segzoo.description import WeightsRecord
from tests.tiny_models import TINY_MIT, tiny_kwargs


def _same_outputs(a: nn.Module, b: nn.Module, in_chans: int = 3) -> None:
    x = torch.randn(2, in_chans, 37, 53)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), atol=0, rtol=0)


def test_save_pretrained_writes_config_weights_and_card(tiny, tmp_path):
    model = segzoo.create_model("segformer_dinov3_large.sat493m", num_classes=4, neck="none", **tiny)
    folder = segzoo.save_pretrained(model, tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "segformer_dinov3_large"
    assert config["model_kwargs"] == dict(num_classes=4, in_chans=3, neck="none", pretrained_tag="sat493m", **tiny)
    assert config["segzoo_version"] == segzoo.__version__ and config["num_classes"] == 4
    assert config["pretrained_cfg"]["mean"] == model.pretrained_cfg["mean"]
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: segzoo\n")
    for fact in ("# segformer_dinov3_large", "`dinov3_large`", "weights `sat493m`", "| classes | 4 |", "dinov3-license"):
        assert fact in card


def test_local_folder_reloads_the_same_model(tiny, tmp_path, capsys):
    model = segzoo.create_model("segformer_retfound_large", num_classes=3, in_chans=1,
                                **tiny_kwargs("segformer_retfound_large"))
    segzoo.save_pretrained(model, tmp_path)
    reloaded = segzoo.create_model(str(tmp_path))
    assert "0 missing, 0 unexpected" in capsys.readouterr().out
    assert reloaded.model_kwargs == model.model_kwargs and reloaded.pretrained_cfg == model.pretrained_cfg
    _same_outputs(model, reloaded, in_chans=1)
    _same_outputs(model, segzoo.create_model(tmp_path), in_chans=1)  # a pathlib.Path works too


def test_reload_with_shape_changing_override_names_the_keys(tiny, tmp_path):
    segzoo.save_pretrained(segzoo.create_model("segformer_dinov2_small", num_classes=3, **tiny), tmp_path)
    with pytest.raises(segzoo.CheckpointError, match=r"shape mismatches: decode_head\.classifier\.bias: file \(3,\) vs model \(5,\).*override"):
        segzoo.create_model(str(tmp_path), num_classes=5)
    frozen = segzoo.create_model(str(tmp_path), freeze_backbone=True)  # a non-shape option may change
    assert frozen.count_parameters()["backbone"][0] == 0


def test_saving_a_model_not_built_by_create_model_is_refused(tiny, tmp_path):
    model = segzoo.create_model("segformer_dinov2_small", num_classes=3, **tiny)
    model.description = None  # as a Segmenter assembled by hand
    with pytest.raises(ValueError, match="create it with segzoo.create_model"):
        segzoo.save_pretrained(model, tmp_path)


def test_bad_folders_fail_clearly(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a registered model name"):
        segzoo.create_model(str(tmp_path / "no_such_folder"))
    with pytest.raises(FileNotFoundError, match="lacks config.json"):
        segzoo.create_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(segzoo.CheckpointError, match="config.json is not a segzoo model config"):
        segzoo.create_model(str(tmp_path))
    segzoo.save_pretrained(segzoo.create_model("segformer_dinov2_small", num_classes=3, **tiny), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="lacks model.safetensors"):
        segzoo.create_model(str(tmp_path))


def test_corrupted_weights_file_is_named(tiny, tmp_path):
    segzoo.save_pretrained(segzoo.create_model("segformer_dinov2_small", num_classes=3, **tiny), tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(segzoo.CheckpointError, match=r"model\.safetensors.*truncated or corrupted"):
        segzoo.create_model(str(tmp_path))


def test_whole_model_file_as_backbone_checkpoint_points_to_create_model(tiny, tmp_path):
    segzoo.save_pretrained(segzoo.create_model("segformer_dinov2_small", num_classes=3, **tiny), tmp_path)
    with pytest.raises(segzoo.CheckpointError, match="whole segzoo model.*segzoo.create_model"):
        segzoo.create_model("segformer_dinov2_small", num_classes=3, checkpoint_path=tmp_path / "model.safetensors", **tiny)


# one model per backbone family, and the licence its card must state (id, name, link), from the publishers' terms
_FAMILY_LICENCES = {
    "segformer_dinov3_small": ("other", "dinov3-license", "https://ai.meta.com/resources/models-and-libraries/dinov3-license/"),
    "segformer_dinov2_small": ("apache-2.0", None, None),
    "segformer_dinov2_reg4_small": ("apache-2.0", None, None),
    "segformer_retfound_large": ("cc-by-nc-4.0", None, None),
    "segformer_retfound_dinov2_large": ("cc-by-nc-4.0", None, None),
    "segformer_visionfm_base": ("other", "visionfm-research-use", "https://github.com/ABILab-CUHK/VisionFM"),
    "segformer_meddinov3_base": ("apache-2.0", None, None),
    "segformer_rad_dino_base": ("other", "msrla", "https://huggingface.co/microsoft/rad-dino/blob/main/LICENSE"),
    "segformer_mit_b0": ("other", "nvidia-segformer-license", "https://github.com/NVlabs/SegFormer/blob/master/LICENSE"),
}


def test_every_family_is_in_the_licence_table():
    families = {segzoo.model_entry(name).backbone.family for name in _FAMILY_LICENCES}
    assert families == {spec.family for spec in segzoo.backbones.BACKBONES.values()}


@pytest.mark.parametrize("name", sorted(_FAMILY_LICENCES))
def test_model_card_states_the_base_weights_licence(name, tmp_path):
    """Read back with huggingface_hub as the Hub reads it: the licence metadata, the tags and the text."""
    kwargs = dict(TINY_MIT) if "mit" in name else tiny_kwargs(name)
    model = segzoo.create_model(name, num_classes=2, **kwargs)
    card = huggingface_hub.ModelCard.load(segzoo.save_pretrained(model, tmp_path) / "README.md")
    licence, licence_name, link = _FAMILY_LICENCES[name]
    assert (card.data.license, card.data.license_name, card.data.license_link) == (licence, licence_name, link)
    entry = segzoo.model_entry(name)
    assert card.data.library_name == "segzoo" and card.data.pipeline_tag == "image-segmentation"
    assert card.data.tags == ["segzoo", "semantic-segmentation", "segformer", entry.backbone.family]
    assert entry.backbone.title in card.text
    assert f"| base weights licence | {f'[{licence_name}]({link})' if link else licence} |" in card.text
    assert card.data.base_model is None  # a random-init backbone has no base model
    advice = entry.backbone.default_weights.input_advice if entry.backbone.default_weights else None
    assert (f"| input advice | {advice} |" in card.text) if advice else ("input advice" not in card.text)
    if entry.backbone.kind == "mit":  # NVIDIA's non-commercial terms, never the MIT licence; no ViT
        assert "license: mit\n" not in str(card) and "ViT" not in card.text and "timm" not in card.text


def test_model_card_names_the_published_weights_as_base_model(tiny, tmp_path):
    model = segzoo.create_model("segformer_dinov2_small", num_classes=2, **tiny)
    model.description.weights = WeightsRecord(pretrained=True, checkpoint_path=None,
                                              hf_hub_id="timm/vit_small_patch14_dinov2.lvd142m")
    card = huggingface_hub.ModelCard.load(segzoo.save_pretrained(model, tmp_path) / "README.md")
    assert card.data.base_model == "timm/vit_small_patch14_dinov2.lvd142m"
