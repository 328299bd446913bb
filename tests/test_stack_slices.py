"""2.5D through nnU-Net's own pipeline: ``segzoo-nnunet stack-slices``.

Fast tests stack small synthetic CT volumes and read the result back with nnU-Net's own reader
(shifted slices, repeated edges, geometry, labels, channel names and the normalisation nnU-Net
maps them to), check the slice axis against nnU-Net's planner on volumes whose thick axis is
not the first, and the refusals. The end-to-end test stacks ``--neighbours 1``, plans and
preprocesses the stacked dataset with stock nnU-Net, trains a tiny zoo model from a tiny
pretrained checkpoint (three CT channels: the RGB patch-embedding filters load unchanged), and
predicts stacked test images with ``segzoo-nnunet predict`` and stock ``nnUNetv2_predict``:
identical volumes in the original images' geometry.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from nnunet_bridge import EXT_TRAINER_DIR
from nnunet_bridge.demo.synthetic import write_fundus_dataset
from nnunet_bridge.demo.synthetic_volumes import write_ct_dataset
from nnunet_bridge.slices import SliceStackError, neighbour_channel_names, stack_slices
from tests.checkpoint_layouts import source_vit
from tests.nnunet_runs import bridge, nnunet_env, refused_in_one_line, run
from tests.tiny_models import TINY_VIT

SRC_ID, DST_ID = 984, 985
SRC, DST = "Dataset984_SyntheticCT", "Dataset985_CT25D"
SHAPE = (8, 48, 48)
ZOO = "2d_segformer_dinov3_small"

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.xdist_group("nnunet_stack")]


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _geometry(path: Path) -> tuple:
    image = sitk.ReadImage(str(path))
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


@pytest.fixture
def raw(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    write_ct_dataset(tmp_path / "raw", SRC_ID, num_train=2, num_test=1, shape=SHAPE)
    return tmp_path / "raw"


def test_every_slice_is_joined_by_its_neighbours_in_the_original_geometry(raw, capsys):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    result = stack_slices(raw / SRC, DST, neighbours=2)
    assert "slice axis 0" in capsys.readouterr().out
    src, dst = raw / SRC, raw / DST
    assert result.folder == dst and result.slice_axis == 0 and result.cases == 3
    case = "ct_000"
    original = _array(src / "imagesTr" / f"{case}_0000.nii.gz")
    channels = [_array(dst / "imagesTr" / f"{case}_{i:04d}.nii.gz") for i in range(5)]
    assert all(c.dtype == np.int16 for c in channels)  # Hounsfield units stay integers
    for offset, channel in zip(range(-2, 3), channels):
        for z in range(SHAPE[0]):
            np.testing.assert_array_equal(channel[z], original[min(max(z + offset, 0), SHAPE[0] - 1)])
    # nnU-Net's reader sees the five channels with the spacing and geometry of the original
    data, props = SimpleITKIO().read_images([str(dst / "imagesTr" / f"{case}_{i:04d}.nii.gz") for i in range(5)])
    _, original_props = SimpleITKIO().read_images([str(src / "imagesTr" / f"{case}_0000.nii.gz")])
    assert data.shape == (5, *SHAPE) and props == original_props
    # labels untouched, test images stacked too
    for name in ("ct_000.nii.gz", "ct_001.nii.gz"):
        assert (dst / "labelsTr" / name).read_bytes() == (src / "labelsTr" / name).read_bytes()
    assert sorted(p.name for p in (dst / "imagesTs").iterdir()) == [f"ct_002_{i:04d}.nii.gz" for i in range(5)]
    dataset = json.loads((dst / "dataset.json").read_text())
    assert dataset["channel_names"] == {str(i): "CT" for i in range(5)}
    assert dataset["numTraining"] == 2 and dataset["labels"] == json.loads((src / "dataset.json").read_text())["labels"]


def test_neighbour_names_keep_each_channels_normalisation():
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import get_normalization_scheme

    names = neighbour_channel_names({"0": "ct", "1": "T2", "2": "zscore"}, 1)
    assert list(names.values()) == ["ct", "ct", "ct", "T2-1", "T2", "T2+1", "zscore", "zscore", "zscore"]
    schemes = [get_normalization_scheme(n).__name__ for n in names.values()]
    assert schemes == ["CTNormalization"] * 3 + ["ZScoreNormalization"] * 6


def test_slice_axis_is_the_one_nnunets_planner_slices_along(raw, capsys):
    """Volumes whose thick axis is x (SimpleITK's first, the array's last): the axis printed is the
    planner's transpose_forward[0], computed by nnU-Net's own method from the spacings its reader reports."""
    from nnunetv2.configuration import ANISO_THRESHOLD
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    folder = raw / SRC
    for path in [*(folder / "imagesTr").iterdir(), *(folder / "imagesTs").iterdir(), *(folder / "labelsTr").iterdir()]:
        image = sitk.ReadImage(str(path))
        image.SetSpacing((4.0, 0.8, 1.0))  # x thick, then z, then y
        sitk.WriteImage(image, str(path), True)
    result = stack_slices(SRC_ID, DST, neighbours=1)
    assert result.slice_axis == 2 and "slice axis 2 of the (z, y, x) arrays" in capsys.readouterr().out
    spacings = [SimpleITKIO().read_images([str(p)])[1]["spacing"] for p in sorted((raw / DST / "imagesTr").iterdir())]
    planner = object.__new__(ExperimentPlanner)  # only what determine_transpose reads
    planner.suppress_transpose, planner.overwrite_target_spacing = False, None
    planner.anisotropy_threshold = ANISO_THRESHOLD
    planner.dataset_fingerprint = {"spacings": spacings, "shapes_after_crop": [SHAPE] * len(spacings)}
    assert planner.determine_transpose()[0][0] == 2
    stacked = _array(raw / DST / "imagesTr" / "ct_000_0000.nii.gz")
    original = _array(folder / "imagesTr" / "ct_000_0000.nii.gz")
    np.testing.assert_array_equal(stacked[..., 1:], original[..., :-1])  # shifted along x
    np.testing.assert_array_equal(stacked[..., 0], original[..., 0])


def test_bad_input_is_refused_in_one_line(raw, tmp_path, capsys):
    def refused(*argv: str) -> str:
        return refused_in_one_line(["stack-slices", *argv], capsys)

    assert "--neighbours must be a whole number >= 1" in refused(str(SRC_ID), DST, "--neighbours", "0")
    assert "must be named DatasetNNN_Name" in refused(str(SRC_ID), "stacked", "--neighbours", "1")
    assert f"dataset id 984 is already taken by {SRC}" in refused(str(SRC_ID), "Dataset984_Again", "--neighbours", "1")
    assert "no raw dataset '999'" in refused("999", DST, "--neighbours", "1")
    (raw / DST).mkdir()
    (raw / DST / "old.txt").write_text("x")
    assert "already exists and is not empty" in refused(str(SRC_ID), DST, "--neighbours", "1")
    write_fundus_dataset(raw, 983, num_train=2, num_test=0, size=32, channels=1)  # 2D PNGs: no slices to stack
    assert "NaturalImage2DIO" in refused("983", "Dataset986_X", "--neighbours", "1")
    assert "must hold images named CASE_XXXX" in refused("--images-only", str(raw / SRC / "labelsTr"), str(tmp_path / "o"),
                                                   "--neighbours", "1")
    with pytest.raises(SliceStackError, match="--slice-axis 3 is not an axis"):
        stack_slices(raw / SRC, "Dataset987_Y", 1, axis=3, verbose=False)


# -- end to end -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stacked():
    """The stacked CT dataset planned and preprocessed by stock nnU-Net, a tiny pretrained
    checkpoint and a config that loads it."""
    base = Path(tempfile.mkdtemp(prefix="segzoo_stack_slices_"))  # private: not pruned by other pytest runs
    try:
        env = nnunet_env(base)
        write_ct_dataset(env["nnUNet_raw"], SRC_ID, num_train=5, num_test=1, shape=SHAPE)
        out = bridge(["stack-slices", str(SRC_ID), DST, "--neighbours", "1"], env)
        run(["nnUNetv2_plan_and_preprocess", "-d", str(DST_ID), "-c", "2d", "-np", "1", "-npfp", "1"], env)
        checkpoint = base / "tiny_dinov3.pth"
        source = source_vit("dinov3_small")
        torch.save(source.state_dict(), checkpoint)
        config = base / "tiny.yaml"
        config.write_text(yaml.safe_dump({
            "model": {"name": "segformer_dinov3_small", "pretrained": False, "checkpoint_path": str(checkpoint),
                      "decoder_hidden_size": 32, "kwargs": {"backbone_kwargs": dict(TINY_VIT)}},
            "lora": {"enabled": False},
            "train": {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1,
                      "warmup_epochs": 0, "save_every": 1}}))
        yield {"env": env, "base": base, "out": out, "config": config, "source": source}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_stacked_ct_trains_three_channel_models_and_predicts_in_the_original_geometry(stacked):
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    import segzoo
    from nnunet_bridge.network import build_zoo_network

    env, base = stacked["env"], stacked["base"]
    assert "slice axis 0" in stacked["out"]
    preprocessed = Path(env["nnUNet_preprocessed"]) / DST
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    assert plans["transpose_forward"][0] == 0  # the axis stack-slices printed is nnU-Net's slice axis
    assert plans["configurations"]["2d"]["normalization_schemes"] == ["CTNormalization"] * 3

    out = bridge(["plan", str(DST_ID), "--config", str(stacked["config"])], env)
    assert "rgb_to_0_1" not in out and "CT normalisation" in out
    manager = PlansManager(str(preprocessed / "nnUNetPlans.json"))
    configuration = manager.get_configuration(ZOO)
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    in_chans = determine_num_input_channels(manager, configuration, dataset_json)
    assert in_chans == 3 and configuration.network_arch_init_kwargs["input_normalization"] == "none"
    # the network nnU-Net builds takes the pretrained RGB filters as they are: nothing adapted
    network = build_zoo_network(in_chans, 3, **configuration.network_arch_init_kwargs)
    report = segzoo.load_backbone_weights(network.model, checkpoint_path=stacked["config"].parent / "tiny_dinov3.pth",
                                          verbose=False)
    assert report.adapted == []
    torch.testing.assert_close(network.model.backbone.model.patch_embed.proj.weight,
                               stacked["source"].patch_embed.proj.weight, rtol=0, atol=0)

    trained = bridge(["train", str(DST_ID), ZOO, "0", "-device", "cpu"], dict(env, nnUNet_n_proc_DA="0"))
    assert "adapted to in_chans" not in trained
    fold = Path(env["nnUNet_results"]) / DST / f"nnUNetTrainerSegZoo__nnUNetPlans__{ZOO}" / "fold_0"
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "Loaded pretrained backbone weights of segformer_dinov3_small" in log

    # test images: stacked with --images-only, predicted by both commands, written in the original geometry
    original = Path(env["nnUNet_raw"]) / SRC / "imagesTs"
    images = base / "imagesTs_25d"
    printed = bridge(["stack-slices", "--images-only", str(original), str(images), "--neighbours", "1"], env)
    assert "slice axis 0" in printed and len(list(images.iterdir())) == 3
    ours, stock = base / "pred_ours", base / "pred_stock"
    common = ["-i", str(images), "-d", str(DST_ID), "-c", ZOO, "-f", "0", "-npp", "0", "-nps", "0", "-device", "cpu"]
    bridge(["predict", "-o", str(ours), *common], env)
    run(["nnUNetv2_predict", "-o", str(stock), *common, "-tr", "nnUNetTrainerSegZoo"],
        dict(env, nnUNet_extTrainer=EXT_TRAINER_DIR))
    [case] = [p.name for p in original.iterdir()]
    name = case.replace("_0000.nii.gz", ".nii.gz")
    assert _geometry(ours / name) == _geometry(original / case)
    np.testing.assert_array_equal(_array(ours / name), _array(stock / name))
