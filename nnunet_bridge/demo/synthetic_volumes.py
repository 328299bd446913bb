"""A small synthetic 3D dataset in nnU-Net's raw format: CT-like abdominal volumes.

Each volume is an elliptic body of soft tissue (about 40 HU) in air (-1000 HU) with a fat
rim, a spine (bone, unlabelled, a bright distractor), a liver-like blob and two kidneys;
labels are 0 background, 1 liver, 2 kidney. Slices are thick (anisotropic spacing, 4 mm
against 0.8 mm in plane), as in clinical CT, so nnU-Net's ``2d`` configuration is the
natural one. Deterministic for a given seed and fast: the test suite trains on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .synthetic import write_dataset_json

__all__ = ["VOLUME_LABELS", "VOLUME_SPACING", "ct_case", "write_ct_dataset"]

VOLUME_LABELS = {"background": 0, "liver": 1, "kidney": 2}
VOLUME_SPACING = (4.0, 0.8, 0.8)  # (z, y, x) in mm
# nnU-Net channel names whose normalisation suits CT: its own CT scheme (clip to the foreground's
# 0.5-99.5 percentiles, then z-score with the foreground's statistics) or a plain per-image z-score
NORMALIZATIONS = ("CT", "zscore")


def ct_case(shape: tuple[int, int, int] = (12, 64, 64), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One ``(z, y, x)`` int16 volume in Hounsfield units and its uint8 label map."""
    rng = np.random.default_rng(seed)
    depth, height, width = shape
    # physical coordinates in mm, centred: structures keep their size whatever the voxel grid
    zz, yy, xx = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, VOLUME_SPACING)],
                             indexing="ij")
    half_y, half_x = height * VOLUME_SPACING[1] / 2, width * VOLUME_SPACING[2] / 2

    image = np.full(shape, -1000.0, np.float32)
    body = _ellipsoid(yy, xx, 0, 0, half_y * rng.uniform(0.72, 0.8), half_x * rng.uniform(0.85, 0.92))
    inner = _ellipsoid(yy, xx, 0, 0, half_y * 0.65, half_x * 0.78)
    image[body] = -100.0  # subcutaneous fat
    image[inner] = 40.0  # soft tissue

    spine = _ellipsoid(yy, xx, half_y * 0.45, 0, half_y * 0.12, half_x * 0.1) & inner
    image[spine] = 600.0

    label = np.zeros(shape, np.uint8)
    liver_c = (rng.uniform(-2, 2), -half_y * rng.uniform(0.05, 0.2), -half_x * rng.uniform(0.3, 0.42))
    liver_r = (depth * VOLUME_SPACING[0] * rng.uniform(0.3, 0.4), half_y * rng.uniform(0.3, 0.38),
               half_x * rng.uniform(0.25, 0.32))
    liver = _ellipsoid3(zz, yy, xx, liver_c, liver_r) & inner
    image[liver] = 95.0
    label[liver] = VOLUME_LABELS["liver"]

    for side in (-1, 1):
        centre = (rng.uniform(-4, 4), half_y * rng.uniform(0.3, 0.38), side * half_x * rng.uniform(0.3, 0.36))
        radii = (depth * VOLUME_SPACING[0] * rng.uniform(0.2, 0.28), half_y * 0.12, half_x * 0.08)
        kidney = _ellipsoid3(zz, yy, xx, centre, radii) & inner & ~liver
        image[kidney] = 170.0
        label[kidney] = VOLUME_LABELS["kidney"]

    image += rng.normal(0, 15, shape).astype(np.float32)  # quantum noise
    image[~body] = -1000.0 + rng.normal(0, 5, int((~body).sum()))
    return np.clip(image, -1024, 3071).round().astype(np.int16), label


def write_ct_dataset(
    raw_folder: str | Path,
    dataset_id: int = 980,
    name: str = "SyntheticCT",
    num_train: int = 6,
    num_test: int = 2,
    shape: tuple[int, int, int] = (12, 64, 64),
    normalization: str = "CT",
    seed: int = 0,
) -> Path:
    """Write ``Dataset{id}_{name}`` (imagesTr/labelsTr/imagesTs/labelsTs as ``.nii.gz``, dataset.json).

    ``normalization`` is the channel name nnU-Net reads: ``"CT"`` (its CT scheme, from
    intensities of the labelled voxels of the whole training set) or ``"zscore"`` (per image).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    folder = Path(raw_folder) / f"Dataset{dataset_id:03d}_{name}"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    spacing_xyz = tuple(float(s) for s in reversed(VOLUME_SPACING))  # SimpleITK speaks (x, y, z)
    for index in range(num_train + num_test):
        image, label = ct_case(shape, seed=seed * 100_003 + index)
        split = "Tr" if index < num_train else "Ts"
        case = f"ct_{index:03d}"
        for array, path in ((image, folder / f"images{split}" / f"{case}_0000.nii.gz"),
                            (label, folder / f"labels{split}" / f"{case}.nii.gz")):
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing(spacing_xyz)
            sitk.WriteImage(volume, str(path), useCompression=True)
    write_dataset_json(folder, {"0": normalization}, VOLUME_LABELS, num_train, ".nii.gz", name,
                       "synthetic CT-like volumes (segzoo nnunet_bridge.demo.synthetic_volumes)")
    return folder


# -- helpers ---------------------------------------------------------------------------


def _ellipsoid(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """An elliptic cylinder through all slices."""
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _ellipsoid3(zz: np.ndarray, yy: np.ndarray, xx: np.ndarray, centre: tuple[float, float, float],
                radii: tuple[float, float, float]) -> np.ndarray:
    return sum(((axis - c) / r) ** 2 for axis, c, r in zip((zz, yy, xx), centre, radii)) <= 1.0
