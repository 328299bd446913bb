"""Files written by segzoo 0.1.0 still load and give what they gave then.

``tests/fixtures/release_0_1/`` was written by the 0.1.0 release's code
(``tests/fixtures/make_release_fixtures.py``): saved model folders with a fixed input and the
eval-mode output, a LoRA adapter-only folder over a local backbone file, and an nnU-Net fold
trained for one epoch with the plans ``segzoo-nnunet plan`` wrote and one prediction.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import segzoo

RELEASE = Path(__file__).resolve().parent / "fixtures" / "release_0_1"
MANIFEST = json.loads((RELEASE / "manifest.json").read_text())
# the release wrote with the same torch on CPU: only reordering of float sums may differ
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def _output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("folder", sorted(MANIFEST["models"]))
def test_saved_model_folder_reloads_with_the_release_output(folder):
    path = RELEASE / "models" / folder
    model = segzoo.create_model(str(path))
    assert model.model_name.split(".")[0] == MANIFEST["models"][folder]
    expected = load_file(str(path / "expected.safetensors"))
    torch.testing.assert_close(_output(model, expected["input"]), expected["output"], **TOLERANCE)


def _adapter_base_kwargs() -> dict:
    """The kwargs the adapter's base was built with, as its config.json records them (LoRA left out:
    load_lora_adapter adds it)."""
    kwargs = json.loads((RELEASE / "lora" / "adapter" / "config.json").read_text())["model_kwargs"]
    return {k: v for k, v in kwargs.items() if k != "lora"}


def test_lora_adapter_loads_onto_a_base_built_from_the_stored_backbone_file():
    from segzoo.lora import has_lora, load_lora_adapter

    base = segzoo.create_model(MANIFEST["lora"]["model"], checkpoint_path=RELEASE / "lora" / "backbone.safetensors",
                               **_adapter_base_kwargs())
    model = load_lora_adapter(base, RELEASE / "lora" / "adapter")  # checks the base fingerprint too
    assert has_lora(model)
    expected = load_file(str(RELEASE / "lora" / "expected.safetensors"))
    torch.testing.assert_close(_output(model, expected["input"]), expected["output"], **TOLERANCE)


def test_lora_adapter_folder_reloads_by_name_once_its_base_path_resolves(tmp_path):
    """The folder records the absolute base path of the machine that wrote it; a copy whose
    recorded path names the stored file reloads with ``create_model(folder)`` alone."""
    folder = shutil.copytree(RELEASE / "lora" / "adapter", tmp_path / "adapter")
    backbone = shutil.copy(RELEASE / "lora" / "backbone.safetensors", tmp_path / "backbone.safetensors")
    for name in ("adapter_config.json", "config.json"):
        config = json.loads((folder / name).read_text())
        assert config["weights"]["checkpoint_path"] == MANIFEST["lora"]["recorded_checkpoint_path"]
        config["weights"]["checkpoint_path"] = str(backbone)
        (folder / name).write_text(json.dumps(config, indent=2))
    model = segzoo.create_model(str(folder))
    expected = load_file(str(RELEASE / "lora" / "expected.safetensors"))
    torch.testing.assert_close(_output(model, expected["input"]), expected["output"], **TOLERANCE)


# -- nnU-Net ----------------------------------------------------------------------------------

NNUNET = MANIFEST["nnunet"]


@pytest.fixture
def release_nnunet(tmp_path, monkeypatch) -> dict:
    """nnU-Net folders holding the release's fold (results) and plans (preprocessed), in tmp_path."""
    base = tmp_path / "nnunet"
    shutil.copytree(RELEASE / "nnunet" / "results", base / "results")
    preprocessed = base / "preprocessed" / NNUNET["dataset"]
    preprocessed.mkdir(parents=True)
    shutil.copy(RELEASE / "nnunet" / "nnUNetPlans.json", preprocessed / "nnUNetPlans.json")
    run = base / "results" / NNUNET["dataset"] / f"{NNUNET['trainer']}__nnUNetPlans__{NNUNET['configuration']}"
    shutil.copy(run / "dataset.json", preprocessed / "dataset.json")
    # initialize() reads the preprocessed data's file type (nnU-Net's blosc2 files) before any case is loaded
    (preprocessed / "nnUNetPlans_2d").mkdir()
    (preprocessed / "nnUNetPlans_2d" / "fundus_000.b2nd").touch()
    (base / "raw").mkdir()
    for key in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"nnUNet_{key}", str(base / key))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    monkeypatch.setenv("nnUNet_compile", "f")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    return {"base": base, "fold": run / "fold_0"}


def _plans() -> dict:
    return json.loads((RELEASE / "nnunet" / "nnUNetPlans.json").read_text())


@pytest.mark.xdist_group("nnunet_e2e")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_nnunet_fold_predicts_the_release_prediction(release_nnunet):
    from nnunet_bridge.cli import main

    out = release_nnunet["base"] / "predicted"
    code = main(["predict", "-i", str(RELEASE / "nnunet" / "imagesTs"), "-o", str(out), "-d", str(NNUNET["dataset_id"]),
                 "-c", NNUNET["configuration"], "-f", "0", "-npp", "1", "-nps", "1", "--save_probabilities",
                 "-device", "cpu"])
    assert code == 0
    case = NNUNET["test_image"].replace("_0000.png", "")
    expected = RELEASE / "nnunet" / "expected"
    assert np.array_equal(np.asarray(Image.open(out / f"{case}.png")), np.asarray(Image.open(expected / f"{case}.png")))
    ours, release = np.load(out / f"{case}.npz"), np.load(expected / f"{case}.npz")
    assert ours["probabilities"].shape[0] == 3  # background and the two labels
    torch.testing.assert_close(torch.from_numpy(ours["probabilities"]), torch.from_numpy(release["probabilities"]),
                               **TOLERANCE)


@pytest.mark.xdist_group("nnunet_e2e")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_nnunet_checkpoint_continues_under_the_release_plans(release_nnunet):
    """What ``--c`` does: a trainer built from the release's plans loads the release's checkpoint."""
    from nnunet_bridge.trainer import nnUNetTrainerSegZoo

    plans = _plans()
    conf = plans["configurations"][NNUNET["configuration"]]
    assert conf["architecture"]["network_class_name"] == "nnunet_bridge.network.build_zoo_network"
    assert conf["segzoo"]["model"]["name"] == NNUNET["config"]["model"]["name"]
    dataset_json = json.loads((release_nnunet["fold"].parent / "dataset.json").read_text())
    trainer = nnUNetTrainerSegZoo(dict(plans, continue_training=True), NNUNET["configuration"], 0, dataset_json,
                                  device=torch.device("cpu"))
    checkpoint = release_nnunet["fold"] / "checkpoint_final.pth"
    trainer.load_checkpoint(str(checkpoint))
    assert trainer.current_epoch == NNUNET["config"]["train"]["num_epochs"]
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    own = trainer.bare_network().state_dict()
    assert own.keys() == saved.keys()
    for key, value in saved.items():
        torch.testing.assert_close(own[key], value, rtol=0, atol=0)
