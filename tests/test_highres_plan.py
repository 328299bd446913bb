"""High-resolution 2d plans (``segzoo-nnunet plan --patch-size H W``) and plan notes that fit
each channel's normalisation.

Fast tests plan on hand-made plans files: the configuration's name, spacing, patch, batch and
data identifier, the note when the request exceeds the median image, and the refusals. The
end-to-end test plans 96 x 96 on 64 x 64 synthetic fundus images, lets the command run nnU-Net's
preprocessing at the new spacing, trains a tiny model briefly and predicts with stock
``nnUNetv2_predict``: labels at the images' own size.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from nnunet_bridge import EXT_TRAINER_DIR
from nnunet_bridge.config import ConfigError, load_config
from nnunet_bridge.demo.synthetic import write_fundus_dataset
from nnunet_bridge.plans import normalisation_notes, plan
from tests.nnunet_runs import bridge, nnunet_env, run
from tests.tiny_models import TINY_VIT

TINY_MODEL = {"name": "segformer_dinov3_small", "pretrained": False, "decoder_hidden_size": 32,
              "kwargs": {"backbone_kwargs": dict(TINY_VIT)}}
HIGHRES_ID = 979

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.xdist_group("nnunet_highres")]


def _plans(tmp_path, monkeypatch, schemes=("RGBTo01Normalization",) * 3, channel_names=None) -> Path:
    """A plans file as nnU-Net's planner writes it for 2d images of median 64 x 48 px at 0.5 mm."""
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "res"))
    folder = tmp_path / "pre" / "Dataset123_Tiny"
    folder.mkdir(parents=True)
    plans = {"dataset_name": "Dataset123_Tiny", "plans_name": "nnUNetPlans", "configurations": {
        "2d": {"patch_size": [64, 48], "batch_size": 12, "normalization_schemes": list(schemes),
               "data_identifier": "nnUNetPlans_2d", "spacing": [0.5, 0.5], "median_image_size_in_voxels": [64, 48]}}}
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    if channel_names is not None:
        (folder / "dataset.json").write_text(json.dumps({"channel_names": dict(enumerate(channel_names))}))
    return folder / "nnUNetPlans.json"


def _config(**train):
    return load_config({"model": TINY_MODEL, "lora": {"enabled": False}, **({"train": train} if train else {})})


def test_a_highres_plan_resamples_the_median_image_to_the_requested_size(tmp_path, monkeypatch, capsys):
    path = _plans(tmp_path, monkeypatch)
    name = plan(123, _config(), resample_to=(128, 96), preprocess=False)
    out = capsys.readouterr().out
    assert name == "2d_segformer_dinov3_small_128x96"
    conf = json.loads(path.read_text())["configurations"][name]
    assert conf["inherits_from"] == "2d" and conf["patch_size"] == [128, 96]
    assert conf["spacing"] == pytest.approx([0.25, 0.25])  # 64 x 48 px at 0.5 mm -> 128 x 96 px
    assert conf["median_image_size_in_voxels"] == [128, 96]
    assert conf["data_identifier"] == f"nnUNetPlans_{name}"  # its own preprocessed data
    assert conf["segzoo"]["train"]["patch_size"] == [128, 96] == conf["patch_size"]
    # the memory model: 8 x 6 = 48 tokens would allow hundreds; nnU-Net's 2d batch caps it
    assert conf["batch_size"] == 12
    assert "exceeds the median image size" in out and "48 tokens per patch against 12" in out
    assert f"nnUNetv2_preprocess -d 123 -plans_name nnUNetPlans -c {name}" in out

    # a side that is no multiple of the patch is snapped to the nearest one; a square request names one size
    name = plan(123, _config(), resample_to=(44, 44), preprocess=False)
    out = capsys.readouterr().out
    conf = json.loads(path.read_text())["configurations"][name]
    assert name == "2d_segformer_dinov3_small_48" and conf["patch_size"] == [48, 48]
    assert "--patch-size [44, 44] -> [48, 48]" in out and "exceeds the median" not in out
    assert conf["spacing"] == pytest.approx([0.5 * 64 / 48, 0.5])


def test_highres_requests_that_cannot_be_planned_are_refused(tmp_path, monkeypatch):
    path = _plans(tmp_path, monkeypatch)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="Give one of them"):
        plan(123, _config(patch_size=[64, 64]), resample_to=(96, 96), preprocess=False)
    with pytest.raises(ConfigError, match="two positive sizes"):
        plan(123, _config(), resample_to=(96,), preprocess=False)
    plans = json.loads(before)
    del plans["configurations"]["2d"]["median_image_size_in_voxels"]
    path.write_text(json.dumps(plans))
    with pytest.raises(ConfigError, match="no median_image_size_in_voxels"):
        plan(123, _config(), resample_to=(96, 96), preprocess=False)


# -- plan notes --------------------------------------------------------------------------


def test_a_ct_plan_note_says_what_ct_normalisation_does_and_never_asks_for_rgb_names(tmp_path, monkeypatch, capsys):
    path = _plans(tmp_path, monkeypatch, schemes=["CTNormalization"] * 3, channel_names=["CT"] * 3)
    plan(123, _config(), verbose=False)
    out = capsys.readouterr().out
    assert "rgb_to_0_1" not in out
    assert "channels 0 ('CT'), 1 ('CT'), 2 ('CT'): nnU-Net's CT normalisation" in out
    conf = json.loads(path.read_text())["configurations"]["2d_segformer_dinov3_small"]
    assert conf["architecture"]["arch_kwargs"]["input_normalization"] == "none"


def test_notes_fit_each_channels_scheme():
    assert normalisation_notes(["RGBTo01Normalization"] * 3) == []  # the backbone's mean/std apply: nothing to say
    [zscore] = normalisation_notes(["ZScoreNormalization"], ["zscore"])
    assert "z-scores each image" in zscore and "rgb_to_0_1" not in zscore
    [fallback] = normalisation_notes(["ZScoreNormalization"], ["green"])
    assert fallback.startswith("channel 0 ('green'): a name nnU-Net does not map") and "'rgb_to_0_1'" in fallback
    [raw] = normalisation_notes(["NoNormalization"], ["noNorm"])
    assert "unchanged" in raw and "rgb_to_0_1" not in raw
    ct, unit = normalisation_notes(["CTNormalization", "RescaleTo01Normalization"], ["CT", "rescale_to_0_1"])
    assert ct.startswith("channel 0 ('CT'): nnU-Net's CT") and "rgb_to_0_1" not in ct
    assert unit.startswith("channel 1 ('rescale_to_0_1'): scaled to [0, 1], but")
    # without dataset.json the channels are numbered, and a z-scored channel is not second-guessed
    [numbered] = normalisation_notes(["ZScoreNormalization"] * 2)
    assert numbered.startswith("channels 0, 1: nnU-Net z-scores") and "rgb_to_0_1" not in numbered


# -- end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fundus():
    base = Path(tempfile.mkdtemp(prefix="segzoo_highres_"))  # private: not pruned by other pytest runs
    try:
        env = nnunet_env(base)
        write_fundus_dataset(env["nnUNet_raw"], HIGHRES_ID, num_train=5, num_test=1, size=64, channels=3)
        run(["nnUNetv2_plan_and_preprocess", "-d", str(HIGHRES_ID), "-c", "2d", "-np", "1", "-npfp", "1"], env)
        config = base / "tiny.yaml"
        config.write_text(yaml.safe_dump({
            "model": TINY_MODEL, "lora": {"enabled": False},
            "train": {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1,
                      "warmup_epochs": 0, "save_every": 1}}))
        yield {"env": env, "base": base, "config": config}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_highres_configuration_trains_and_stock_nnunet_predicts_at_the_images_size(fundus):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    env, base = fundus["env"], fundus["base"]
    name = "2d_segformer_dinov3_small_96"
    out = bridge(["plan", str(HIGHRES_ID), "--config", str(fundus["config"]), "--patch-size", "96", "96"], env)
    assert f"Configuration '{name}'" in out and "exceeds the median image size" in out
    dataset = next(Path(env["nnUNet_preprocessed"]).glob(f"Dataset{HIGHRES_ID}_*"))
    configurations = json.loads((dataset / "nnUNetPlans.json").read_text())["configurations"]
    conf, plain = configurations[name], configurations["2d"]
    # nnU-Net's median image is the one after cropping the black border (about 60 px): that is what becomes 96 px
    expected = [s * m / 96 for s, m in zip(plain["spacing"], plain["median_image_size_in_voxels"])]
    assert conf["patch_size"] == [96, 96] and conf["spacing"] == pytest.approx(expected)
    assert all(s < 1 for s in conf["spacing"])  # upsampled
    # nnU-Net's preprocessing ran at the new spacing: every training case is 96 x 96 pixels
    folder = dataset / f"nnUNetPlans_{name}"
    cases = infer_dataset_class(str(folder))(str(folder))
    assert len(cases.identifiers) == 5
    for identifier in cases.identifiers:  # about 96 x 96 pixels each, as cropped images differ a little
        data, seg, _, _ = cases.load_case(identifier)
        assert data.shape[:2] == (3, 1) and tuple(seg.shape) == tuple((1, *data.shape[1:]))
        assert all(abs(side - 96) <= 8 for side in data.shape[2:]) and max(data.shape[2:]) > 64

    bridge(["train", str(HIGHRES_ID), name, "0", "-device", "cpu"], dict(env, nnUNet_n_proc_DA="0"))
    images = Path(env["nnUNet_raw"]) / dataset.name / "imagesTs"
    predictions = base / "pred"
    run(["nnUNetv2_predict", "-i", str(images), "-o", str(predictions), "-d", str(HIGHRES_ID), "-c", name, "-f", "0",
         "-tr", "nnUNetTrainerSegZoo", "-npp", "0", "-nps", "0", "-device", "cpu"],
        dict(env, nnUNet_extTrainer=EXT_TRAINER_DIR))
    [png] = list(predictions.glob("*.png"))
    labels = np.asarray(Image.open(png))
    assert labels.shape == (64, 64) and set(np.unique(labels)) <= {0, 1, 2}
