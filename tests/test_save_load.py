"""Whole-model save / reload from a local folder: config.json + model.safetensors + model card."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import segzoo

from tests.tiny_models import tiny_kwargs


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


def test_model_card_licence_metadata_is_a_hub_slug(tiny, tmp_path):
    model = segzoo.create_model("segformer_visionfm_base.fundus", num_classes=2,
                                **tiny_kwargs("segformer_visionfm_base"))
    card = (segzoo.save_pretrained(model, tmp_path) / "README.md").read_text()
    assert "license: other\nlicense_name: visionfm-license\n" in card
    assert "| base weights licence | see https://github.com/ABILab-CUHK/VisionFM (research use) |" in card
