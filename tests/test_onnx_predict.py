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
