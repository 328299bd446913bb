"""One description of a model: what create_model records, what config.json and
adapter_config.json hold alike, and the first format of both files still loading."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

import segzoo
from segzoo.description import DESCRIPTION_KEYS, ModelDescription, WeightsRecord
from segzoo.lora import ADAPTER_CONFIG_NAME
from tests.checkpoint_layouts import source_vit

NAME = "segformer_dinov3_base"


def _lora_model_on_a_file(tiny, tmp_path):
    save_file(source_vit("dinov3_base").state_dict(), str(tmp_path / "backbone.safetensors"))
    model = segzoo.create_model(f"{NAME}.lvd1689m", num_classes=3, checkpoint_path=tmp_path / "backbone.safetensors",
                                lora=dict(r=4, alpha=8, dropout=0.0), **tiny)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def test_create_model_records_one_description_that_round_trips(tiny, tmp_path):
    model = _lora_model_on_a_file(tiny, tmp_path)
    description = model.description
    assert description.name == f"{NAME}.lvd1689m" and model.model_name == NAME
    assert description.kwargs is model.model_kwargs and description.lora == dict(r=4, alpha=8, dropout=0.0,
                                                                                  target_modules=["qkv"])
    assert description.weights == WeightsRecord(pretrained=False,
                                                checkpoint_path=str(tmp_path / "backbone.safetensors"))
    assert ModelDescription.from_dict(json.loads(json.dumps(description.to_dict()))) == description
    model.reset_classifier(5)
    assert description.kwargs["num_classes"] == 5  # the description follows the model


def test_whole_model_and_adapter_folders_hold_the_same_description(tiny, tmp_path):
    model = _lora_model_on_a_file(tiny, tmp_path)
    whole = json.loads((segzoo.save_pretrained(model, tmp_path / "whole") / "config.json").read_text())
    adapter = json.loads((segzoo.save_pretrained(model, tmp_path / "adapter", adapter_only=True)
                          / ADAPTER_CONFIG_NAME).read_text())
    for key in DESCRIPTION_KEYS:
        assert whole[key] == adapter[key] == model.description.to_dict()[key], key


def test_folders_of_the_first_format_still_load(tiny, tmp_path):
    model = _lora_model_on_a_file(tiny, tmp_path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = model(x)

    whole = segzoo.save_pretrained(model, tmp_path / "whole")
    config = json.loads((whole / "config.json").read_text())
    for key in ("weights", "segzoo_version"):
        del config[key]
    (whole / "config.json").write_text(json.dumps(dict(config, format_version=1)))

    adapter = segzoo.save_pretrained(model, tmp_path / "adapter", adapter_only=True)
    new = json.loads((adapter / ADAPTER_CONFIG_NAME).read_text())
    kwargs = {k: v for k, v in new["model_kwargs"].items() if k != "lora"}
    old = {"format": new["format"], "format_version": 1, "model_name": new["architecture"], "model_kwargs": kwargs,
           "lora": new["model_kwargs"]["lora"],
           "base": {"pretrained_tag": None, "hf_hub_id": None, "pretrained": False,
                    "checkpoint_path": new["weights"]["checkpoint_path"], "sha256": new["base_sha256"]}}
    (adapter / ADAPTER_CONFIG_NAME).write_text(json.dumps(old))

    for folder in (whole, adapter):
        with torch.no_grad():
            torch.testing.assert_close(segzoo.create_model(str(folder)).eval()(x), want)
