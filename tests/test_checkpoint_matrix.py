"""Every checkpoint family against every backbone family, through segzoo.create_model(checkpoint_path=...).

Each file is written at test size in a published layout (tests/checkpoint_layouts.py). A file
loads only where the table below says so: its own family, and families that take the same
tensors in the same layout (timm's layout names an architecture, not a family; RAD-DINO's files
are DINOv2 ViT-B/14 files). Every other cell must be refused early, before any renaming, with a
CheckpointError that names what the file looks like, what the model expects, and the fix.
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

import segzoo
from tests.checkpoint_layouts import (dino_teacher, mae_checkpoint, meddinov3_checkpoint, meta_dinov2, meta_dinov3,
                                      source_vit, transformers_dinov2)
from tests.tiny_models import TINY_MIT, tiny_kwargs

# one model per backbone family
MODELS = {
    "dinov3": "segformer_dinov3_base",
    "dinov2": "segformer_dinov2_base",
    "dinov2_reg4": "segformer_dinov2_reg4_base",
    "retfound": "segformer_retfound_large",
    "retfound_dinov2": "segformer_retfound_dinov2_large",
    "visionfm": "segformer_visionfm_base",
    "meddinov3": "segformer_meddinov3_base",
    "rad_dino": "segformer_rad_dino_base",
    "mit": "segformer_mit_b0",
}

# file -> (the model families it loads into, words the refusal must use for the file's architecture and layout)
FILES = {
    "dinov3_timm": ({"dinov3", "meddinov3"}, "DINOv3 ViT", "timm's layout"),
    "dinov3_meta": ({"dinov3"}, "DINOv3 ViT", "Meta's original DINOv3 layout"),
    "dinov2_timm": ({"dinov2", "retfound_dinov2", "rad_dino"}, "DINOv2 ViT (", "timm's layout"),
    "dinov2_meta": ({"dinov2", "rad_dino"}, "DINOv2 ViT (", "Meta's original DINOv2 layout"),
    "dinov2_reg4_timm": ({"dinov2_reg4"}, "DINOv2 ViT with registers", "timm's layout"),
    "dinov2_reg4_meta": ({"dinov2_reg4"}, "DINOv2 ViT with registers", "Meta's original DINOv2 layout"),
    "retfound_mae": ({"retfound"}, "plain ViT", "MAE pre-training file"),
    "plain_vit16_timm": ({"retfound", "visionfm"}, "plain ViT", "timm's layout"),
    "retfound_dinov2_teacher": ({"retfound_dinov2"}, "DINOv2 ViT (", "DINO training file"),
    "visionfm_teacher": ({"visionfm"}, "plain ViT", "DINO training file"),
    "meddinov3_teacher": ({"meddinov3"}, "DINOv3 ViT", "DINO training file"),
    "rad_dino_transformers": ({"dinov2", "rad_dino"}, "DINOv2 ViT (", "transformers' Dinov2Model layout"),
    "rad_dino_backbone_compatible": ({"dinov2", "rad_dino"}, "DINOv2 ViT (", "Meta's original DINOv2 layout"),
    "mit_transformers": ({"mit"}, "MiT encoder", "transformers' SegFormer layout"),
}
# what each model family's refusal says it expects
EXPECTS = {"dinov3": "expects a DINOv3 ViT", "meddinov3": "expects a DINOv3 ViT", "dinov2": "expects a DINOv2 ViT (",
           "rad_dino": "expects a DINOv2 ViT (", "retfound_dinov2": "expects a DINOv2 ViT (",
           "dinov2_reg4": "expects a DINOv2 ViT with registers", "retfound": "expects a plain ViT",
           "visionfm": "expects a plain ViT", "mit": "expects a MiT encoder"}


def _save(state: dict, path) -> str:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def _timm(backbone: str) -> dict:
    return source_vit(backbone).state_dict()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Each file of FILES, written once."""
    from transformers import SegformerForImageClassification

    from tests.tiny_models import segformer_reference_config

    tmp = tmp_path_factory.mktemp("matrix")
    out = {
        "dinov3_timm": _save(_timm("dinov3_base"), tmp / "dinov3.safetensors"),
        "dinov2_timm": _save(_timm("dinov2_base"), tmp / "dinov2.safetensors"),
        "dinov2_reg4_timm": _save(_timm("dinov2_reg4_base"), tmp / "dinov2_reg4.safetensors"),
        "plain_vit16_timm": _save(_timm("visionfm_base"), tmp / "vit16.safetensors"),
        "rad_dino_backbone_compatible": _save(meta_dinov2(_timm("rad_dino_base")), tmp / "backbone_compatible.safetensors"),
    }
    torch_files = {
        "dinov3_meta": meta_dinov3(_timm("dinov3_base"), 2),
        "dinov2_meta": meta_dinov2(_timm("dinov2_base")),
        "dinov2_reg4_meta": meta_dinov2(_timm("dinov2_reg4_base"), registers=True),
        "retfound_mae": mae_checkpoint(_timm("retfound_large")),
        "retfound_dinov2_teacher": dino_teacher(meta_dinov2(_timm("retfound_dinov2_large"))),
        "visionfm_teacher": dino_teacher(_timm("visionfm_base"), ibot=True),
        "meddinov3_teacher": meddinov3_checkpoint(_timm("meddinov3_base"), 2),
    }
    for name, checkpoint in torch_files.items():
        torch.save(checkpoint, tmp / f"{name}.pth")
        out[name] = str(tmp / f"{name}.pth")
    transformers_dinov2().save_pretrained(tmp / "rad-dino")
    out["rad_dino_transformers"] = str(tmp / "rad-dino" / "model.safetensors")
    mit = segzoo.create_model("segformer_mit_b0", num_classes=2, **TINY_MIT)
    SegformerForImageClassification(segformer_reference_config(mit)).save_pretrained(tmp / "mit")
    out["mit_transformers"] = str(tmp / "mit" / "model.safetensors")
    return out


def _create(family: str, path: str, **kwargs):
    name = MODELS[family]
    size = TINY_MIT if family == "mit" else tiny_kwargs(name)
    return segzoo.create_model(name, num_classes=2, checkpoint_path=path, **size, **kwargs)


def test_every_file_and_model_family_is_in_the_matrix():
    assert set(MODELS) == {spec.family for spec in segzoo.backbones.BACKBONES.values()}
    assert set(FILES) == {"dinov3_timm", "dinov3_meta", "dinov2_timm", "dinov2_meta", "dinov2_reg4_timm",
                          "dinov2_reg4_meta", "retfound_mae", "plain_vit16_timm", "retfound_dinov2_teacher",
                          "visionfm_teacher", "meddinov3_teacher", "rad_dino_transformers",
                          "rad_dino_backbone_compatible", "mit_transformers"}


@pytest.mark.parametrize("model_family", list(MODELS))
@pytest.mark.parametrize("file", list(FILES))
def test_cross_family_file_is_refused_early_naming_both_and_the_fix(file, model_family, files, capsys):
    loads_into, arch_words, layout_words = FILES[file]
    if model_family in loads_into:
        _create(model_family, files[file])
        # an encoder-only MiT file leaves the decode head as initialised, and says so
        missing = r"\d+ missing \(left as initialised\)" if model_family == "mit" else "0 missing"
        assert re.search(rf"\d+ tensors loaded, {missing}, 0 unexpected", capsys.readouterr().out)
        return
    with pytest.raises(segzoo.CheckpointError) as caught:
        _create(model_family, files[file])
    message = str(caught.value)
    # refused on what the file is, before any key renaming or partial-load accounting
    assert message.startswith(f"refusing {files[file]}: it looks like a "), message
    assert "partial load" not in message and "tensors loaded" not in capsys.readouterr().out
    assert arch_words in message.split(", but ")[0] and layout_words in message.split(", but ")[0], message
    assert f"but {MODELS[model_family]} (" in message and EXPECTS[model_family] in message, message
    # the fix: the model families this file is for, by name, over the same head
    for family in loads_into:
        assert re.search(rf"segformer_{family}_(base|large|b0|<[a-z0-9|]+>)(?![a-z0-9_])", message), (family, message)
    same_tensors = EXPECTS[model_family] == EXPECTS[next(iter(loads_into))]
    assert ("checkpoint_format=" in message) == same_tensors, message


def test_checkpoint_format_loads_another_familys_layout_of_the_same_architecture(files, capsys):
    model = _create("retfound_dinov2", files["dinov2_meta"], checkpoint_format="dinov2")
    assert "(dinov2): " in capsys.readouterr().out and model.backbone.spec.name == "retfound_dinov2_large"
    _create("dinov3", files["meddinov3_teacher"], checkpoint_format="meddinov3")
    assert "(dino_teacher): " in capsys.readouterr().out


def test_checkpoint_format_never_loads_another_architecture(files):
    # the crash this refusal replaces: a DINOv2 file reached timm's DINOv3 converter and failed inside it
    with pytest.raises(segzoo.CheckpointError, match=r"looks like a DINOv2 ViT .* expects a DINOv3 ViT"):
        _create("dinov3", files["dinov2_meta"], checkpoint_format="dinov3")


def test_load_backbone_weights_refuses_the_same_way(files):
    model = segzoo.create_model("upernet_dinov3_small", num_classes=2, **tiny_kwargs("upernet_dinov3_small"))
    with pytest.raises(segzoo.CheckpointError, match=r"This file is for upernet_dinov2_<small\|base\|large\|giant>"):
        segzoo.load_backbone_weights(model, checkpoint_path=files["dinov2_timm"])


def test_a_vit_model_refuses_the_segformer_format_by_name(files):
    with pytest.raises(ValueError, match=r"'transformers_segformer' is the layout of segformer_mit_\* models"):
        _create("dinov3", files["dinov3_timm"], checkpoint_format="transformers_segformer")
