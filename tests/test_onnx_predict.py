"""The ONNX Runtime predictor's pieces against nnU-Net's own: window steps, Gaussian weights,
intensity normalisation and the crop (the whole pipeline against nnUNetv2_predict is in
tests/test_nnunet_e2e.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window
from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
from nnunetv2.preprocessing.normalization import default_normalization_schemes as schemes

from nnunet_bridge.deploy.onnx_predict import _crop_to_nonzero, gaussian_weights, normalize_channel, sliding_window_steps


@pytest.mark.parametrize("image_size, patch_size, step", [((100, 90), (64, 64), 0.5), ((64, 200), (64, 48), 0.5),
                                                          ((130, 77, 51), (32, 48, 40), 0.3)])
def test_window_steps_are_nnunets(image_size, patch_size, step):
    assert sliding_window_steps(image_size, patch_size, step) == compute_steps_for_sliding_window(
        image_size, patch_size, step)


def test_gaussian_weights_are_nnunets_up_to_scale():
    """nnU-Net scales its map by 10 and keeps it in float16: only ratios matter (weights divide out)."""
    ours = gaussian_weights((64, 48))
    theirs = compute_gaussian((64, 48), sigma_scale=1 / 8, value_scaling_factor=10, dtype=torch.float32,
                              device=torch.device("cpu")).numpy()
    np.testing.assert_allclose(ours, theirs / theirs.max(), rtol=1e-5, atol=1e-7)
    assert ours.min() > 0


def _image(rng: np.random.Generator) -> np.ndarray:
    image = rng.normal(40, 300, (1, 3, 40, 50)).astype(np.float32)
    image[:, :, :6] = 0  # a zero border that cropping removes
    return image


@pytest.mark.parametrize("scheme, use_mask", [("ZScoreNormalization", False), ("ZScoreNormalization", True),
                                              ("CTNormalization", False), ("RescaleTo01Normalization", False),
                                              ("NoNormalization", False)])
def test_normalisation_is_nnunets(scheme, use_mask):
    rng = np.random.default_rng(0)
    data, seg, _ = crop_to_nonzero(_image(rng))
    props = {"mean": 35.0, "std": 280.0, "percentile_00_5": -500.0, "percentile_99_5": 700.0}
    expected = getattr(schemes, scheme)(use_mask_for_norm=use_mask, intensityproperties=props).run(
        data[0].copy(), seg[0])
    ours, _, inside = _crop_to_nonzero(_image(np.random.default_rng(0)))
    channel = {"name": "CT", "normalization": scheme, "use_mask_for_norm": use_mask, "intensity_properties": props}
    np.testing.assert_allclose(normalize_channel(ours[0], channel, inside), expected, rtol=1e-5, atol=1e-5)


def test_crop_is_nnunets_bounding_box():
    image = _image(np.random.default_rng(1))
    ours, bbox, inside = _crop_to_nonzero(image)
    theirs, seg, their_bbox = crop_to_nonzero(image.copy())
    assert [list(b) for b in bbox] == [list(b) for b in their_bbox]
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(inside, seg[0] >= 0)


def test_rgb_channels_are_scaled_and_unknown_schemes_named():
    channel = {"name": "R", "normalization": "RGBTo01Normalization"}
    values = np.array([[0, 51, 255]], np.float32)
    np.testing.assert_allclose(normalize_channel(values, channel, values > 0), [[0, 0.2, 1]])
    with pytest.raises(ValueError, match="MyNormalization.*nnUNetv2_predict"):
        normalize_channel(values, {"name": "x", "normalization": "MyNormalization"}, values > 0)


def test_predictor_names_bad_input(tmp_path):
    """A missing facts file, a wrong channel count and a wrong spacing are refused with the fix."""
    pytest.importorskip("onnxruntime", reason="the export extra")
    import json

    import segzoo
    from nnunet_bridge.deploy.onnx_predict import OnnxFoldPredictor
    from tests.tiny_models import TINY

    model = segzoo.create_model("segformer_dinov3_small", num_classes=2, **TINY)
    onnx_path = segzoo.export_onnx(model, tmp_path / "fold.onnx", img_size=32)
    with pytest.raises(FileNotFoundError, match="segzoo-nnunet export"):
        OnnxFoldPredictor(onnx_path)
    channel = {"name": "R", "normalization": "RGBTo01Normalization", "use_mask_for_norm": False}
    facts = {"patch_size": [32, 32], "spacing": [1.0, 1.0], "labels": {"background": 0, "x": 1},
             "channels": [dict(channel, index=i) for i in range(3)]}
    (tmp_path / "fold.json").write_text(json.dumps(facts))
    predictor = OnnxFoldPredictor(onnx_path)
    with pytest.raises(ValueError, match="C=3 channels"):
        predictor.predict(np.zeros((1, 40, 40), np.float32))
    with pytest.raises(ValueError, match="resample"):
        predictor.predict(np.zeros((3, 40, 40), np.float32), spacing=[0.5, 0.5])
    assert predictor.predict(np.full((3, 40, 36), 128, np.float32)).shape == (40, 36)


# -- the command: nnU-Net's file types, checked against nnU-Net's own readers -------------------


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> dict:
    """A tiny 3-channel and 1-channel model as ONNX files (fixed 32x32 patches), exported once."""
    pytest.importorskip("onnxruntime", reason="the export extra")
    import segzoo
    from tests.tiny_models import TINY

    folder = tmp_path_factory.mktemp("onnx")
    return {channels: segzoo.export_onnx(segzoo.create_model("segformer_dinov3_small", num_classes=3, img_size=32,
                                                             in_chans=channels, **TINY), folder / f"rgb{channels}.onnx")
            for channels in (1, 3)}


def _fold(tiny_onnx: dict, folder, channels: list[str], schemes: list[str], spacing: list[float],
          file_ending: str, transpose: list[int] = (0, 1, 2)):
    """An exported fold: the ONNX file and the JSON that `segzoo-nnunet export` writes (its own function,
    on hand-made plans of a 2d configuration)."""
    import json
    import shutil

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_bridge.deploy.onnx_predict import OnnxFoldPredictor
    from nnunet_bridge.export import _deployment_facts

    folder.mkdir(exist_ok=True)
    onnx_path = shutil.copy(tiny_onnx[len(channels)], folder / "fold0.onnx")
    backward = [int(i) for i in np.argsort(transpose)]
    plans = PlansManager({
        "dataset_name": "Dataset976_Files", "transpose_forward": list(transpose), "transpose_backward": backward,
        "foreground_intensity_properties_per_channel": {"0": {"mean": 90.0, "std": 40.0, "percentile_00_5": 0.0,
                                                              "percentile_99_5": 250.0}},
        "configurations": {"2d": {"patch_size": [32, 32], "spacing": spacing, "normalization_schemes": schemes,
                                  "use_mask_for_norm": [False] * len(schemes),
                                  "architecture": {"network_class_name": "nnunet_bridge.network.build_zoo_network",
                                                   "arch_kwargs": {}, "_kw_requires_import": []}}}})
    dataset = {"labels": {"background": 0, "a": 1, "b": 2}, "file_ending": file_ending,
               "channel_names": {str(i): name for i, name in enumerate(channels)}}
    facts = _deployment_facts(plans, plans.get_configuration("2d"), dataset, "2d", 0, "checkpoint_final.pth")
    (folder / "fold0.json").write_text(json.dumps(facts))
    return OnnxFoldPredictor(onnx_path)


def _run(argv: list[str], capsys) -> tuple[int, str]:
    from nnunet_bridge.deploy.onnx_predict import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("ending", [".png", ".tif"])
def test_command_reads_and_writes_natural_images_as_nnunet(tiny_onnx, tmp_path, capsys, ending):
    """RGB images read as nnU-Net's NaturalImage2DIO reads them, labelled as predict() labels that
    array, written back as label images of the same type and size."""
    import tifffile
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    from PIL import Image

    predictor = _fold(tiny_onnx, tmp_path / "fold", ["R", "G", "B"], ["RGBTo01Normalization"] * 3, [1.0, 1.0], ending)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for case, size in (("a", (40, 36)), ("b", (21, 30))):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        (Image.fromarray(pixels).save if ending == ".png" else lambda f: tifffile.imwrite(f, pixels))(
            images / f"{case}_0000{ending}")
    code, out = _run([str(tmp_path / "fold" / "fold0.onnx"), "-i", str(images), "-o", str(tmp_path / "out")], capsys)
    assert code == 0 and "[2/2]" in out, out
    for case, size in (("a", (40, 36)), ("b", (21, 30))):
        image, props = NaturalImage2DIO().read_images([str(images / f"{case}_0000{ending}")])
        want = predictor.predict(image[:, 0], spacing=props["spacing"][1:])
        got = NaturalImage2DIO().read_seg(str(tmp_path / "out" / f"{case}{ending}"))[0][0, 0]
        assert got.shape == size and np.array_equal(got, want)


def _volume(path, zyx: np.ndarray, spacing_zyx: tuple[float, float, float]) -> None:
    """A NIfTI as scanners write it: the array (x, y, z) with its zooms, an oblique-free affine and an origin."""
    import nibabel

    affine = np.diag([*spacing_zyx[::-1], 1.0])
    affine[:3, 3] = (-20.0, 10.0, 5.0)
    nibabel.save(nibabel.Nifti1Image(zyx.transpose(2, 1, 0), affine), str(path))


@pytest.mark.parametrize("ending", [".nii.gz", ".tiff"])
def test_command_reads_and_writes_volumes_as_nnunet(tiny_onnx, tmp_path, capsys, ending):
    """A CT volume read as nnU-Net's SimpleITKIO (NIfTI) or Tiff3DIO (with its case.json spacing) reads it,
    labelled slice by slice as predict() labels that array, written back in the input's geometry."""
    import json

    import tifffile
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.imageio.tif_reader_writer import Tiff3DIO

    from nnunet_bridge.deploy.onnx_predict import read_case

    predictor = _fold(tiny_onnx, tmp_path / "fold", ["CT"], ["CTNormalization"], [0.8, 0.8], ending)
    images = tmp_path / "images"
    images.mkdir()
    volume = np.random.default_rng(1).normal(90, 60, (5, 40, 36)).astype(np.float32)
    if ending == ".nii.gz":
        _volume(images / f"ct_0000{ending}", volume, (4.0, 0.8, 0.8))
    else:
        tifffile.imwrite(images / f"ct_0000{ending}", volume)
        (images / "ct.json").write_text(json.dumps({"spacing": [4.0, 0.8, 0.8]}))
    io = SimpleITKIO() if ending == ".nii.gz" else Tiff3DIO()
    theirs, props = io.read_images([str(images / f"ct_0000{ending}")])
    ours, spacing, _ = read_case([images / f"ct_0000{ending}"], ending)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert np.allclose(spacing, props["spacing"])

    code, out = _run([str(tmp_path / "fold" / "fold0.onnx"), "-i", str(images), "-o", str(tmp_path / "out")], capsys)
    assert code == 0 and "[1/1] ct" in out, out
    written, written_props = io.read_seg(str(tmp_path / "out" / f"ct{ending}"))
    want = predictor.predict(theirs, spacing=props["spacing"])
    assert np.array_equal(written[0], want) and len(np.unique(want)) > 1
    if ending == ".nii.gz":  # the input's geometry, as nnU-Net's writer keeps it
        for key in ("spacing", "origin", "direction"):
            np.testing.assert_allclose(written_props["sitk_stuff"][key], props["sitk_stuff"][key], atol=1e-5)
    else:
        assert json.loads((tmp_path / "out" / "ct.json").read_text()) == {"spacing": [4.0, 0.8, 0.8]}


def test_command_refuses_volumes_in_another_axis_order_or_spacing(tiny_onnx, tmp_path, capsys):
    """A volume stored with its axes in another order, or at another spacing, is refused naming the case
    and the fix; so is a volume handed to predict() without its spacing. The fold's transpose_forward
    (slices along x here) is applied to the spacing before it is compared."""
    predictor = _fold(tiny_onnx, tmp_path / "fold", ["CT"], ["CTNormalization"], [0.8, 0.8], ".nii.gz",
                      transpose=[2, 0, 1])
    volume = np.random.default_rng(2).normal(90, 60, (40, 36, 5)).astype(np.float32)  # (z, y, x): x is the slice axis
    onnx_file = str(tmp_path / "fold" / "fold0.onnx")
    for name, array, spacing, message in (
            ("swapped", volume.transpose(2, 1, 0), (4.0, 0.8, 0.8), "only in another axis order"),
            ("coarse", volume, (1.0, 1.0, 4.0), "resample the image to that spacing first")):
        images = tmp_path / name
        images.mkdir()
        _volume(images / "case_0000.nii.gz", array, spacing)
        code, out = _run([onnx_file, "-i", str(images), "-o", str(tmp_path / "out")], capsys)
        assert code == 2 and out.startswith("onnx_predict: error: case case: image spacing") and message in out, out
    assert predictor.predict(volume[None], spacing=(0.8, 0.8, 4.0)).shape == volume.shape  # the order it was trained on
    with pytest.raises(ValueError, match="a volume needs its spacing"):
        predictor.predict(volume[None])
    assert not list((tmp_path / "out").glob("*.nii.gz"))


def test_command_names_what_it_cannot_read(tiny_onnx, tmp_path, capsys, monkeypatch):
    """No nibabel: the error names the package; no case of the dataset's file type: the error names
    the ending expected and the one found."""
    import sys

    _fold(tiny_onnx, tmp_path / "fold", ["CT"], ["CTNormalization"], [0.8, 0.8], ".nii.gz")
    images = tmp_path / "images"
    images.mkdir()
    _volume(images / "ct_0000.nii.gz", np.zeros((2, 32, 32), np.float32), (4.0, 0.8, 0.8))
    argv = [str(tmp_path / "fold" / "fold0.onnx"), "-i", str(images), "-o", str(tmp_path / "out")]
    monkeypatch.setitem(sys.modules, "nibabel", None)
    code, out = _run(argv, capsys)
    assert code == 2 and "reading .nii.gz files needs nibabel: pip install nibabel" in out, out
    monkeypatch.undo()
    (images / "ct_0000.nii.gz").rename(images / "ct_0000.png")
    code, out = _run(argv, capsys)
    assert code == 2 and "no *_0000.nii.gz images in" in out and "found .png" in out, out
