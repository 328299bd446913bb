"""Predict with an exported fold (``segzoo-nnunet export``) as ``nnUNetv2_predict`` does, on ONNX Runtime.

Needs numpy, scipy and onnxruntime only (no torch, no nnU-Net): this file can be copied
to a deployment. The steps follow nnU-Net's defaults, read from the JSON written beside
the ONNX file: transpose, crop to the nonzero bounding box, per-channel intensity
normalisation, sliding window (half-patch overlap, Gaussian weights, mirroring), argmax,
then the crop and transpose undone. Images must already be at the configuration's
spacing (nnU-Net would resample; natural images and most 2D data need none)::

    predictor = OnnxFoldPredictor("fold0.onnx")          # reads fold0.json
    labels = predictor.predict(image)                     # a natural image (C, H, W)
    labels = predictor.predict(volume, spacing=(z, y, x))  # a volume (C, Z, Y, X) and its spacing

``python -m nnunet_bridge.deploy.onnx_predict fold0.onnx -i imagesTs -o predictions`` does this
for a folder of cases named as nnU-Net names them (``case_0000.png``), in the file type of the
fold's dataset (``file_ending`` in the JSON), read as nnU-Net's readers read them: PNG, BMP and
2D TIFF natural images (Pillow, tifffile), 3D TIFF with nnU-Net's ``case.json`` spacing file
(tifffile), NIfTI (nibabel). Each is imported only when its files are read; a missing one is named.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import itertools
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.ndimage import binary_fill_holes, gaussian_filter

__all__ = ["OnnxFoldPredictor", "normalize_channel", "sliding_window_steps", "gaussian_weights"]


class OnnxFoldPredictor:
    """An exported fold and its deployment facts: ``predict(image) -> labels``."""

    def __init__(self, onnx_path: str | Path, facts_path: str | Path | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",)):
        import onnxruntime  # the deployment's one heavy dependency

        onnx_path = Path(onnx_path)
        facts_path = Path(facts_path) if facts_path is not None else onnx_path.with_suffix(".json")
        if not facts_path.is_file():
            raise FileNotFoundError(f"no deployment facts {facts_path}: `segzoo-nnunet export` writes them beside "
                                    "the ONNX file; pass facts_path=... if you moved it")
        self.facts = json.loads(facts_path.read_text())
        self.session = onnxruntime.InferenceSession(str(onnx_path), providers=list(providers))
        self.patch_size = tuple(self.facts["patch_size"])
        inference = self.facts.get("inference", {})
        self.tile_step_size = float(inference.get("tile_step_size", 0.5))
        self.mirror_axes = tuple(inference.get("mirror_axes", ()))
        self.weights = gaussian_weights(self.patch_size, inference.get("gaussian_sigma_scale", 1 / 8))
        self.label_values = _label_values(self.facts["labels"])

    def predict(self, image: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
        """Labels of ``image`` (channels first, as nnU-Net's readers give it), same spatial shape.

        ``spacing``: the image's voxel spacing in its own axis order, checked against the
        configuration's (this predictor does not resample). Required for a volume (C, Z, Y, X),
        whose axis order is checked with it; optional for a natural image (C, H, W).
        """
        channels = len(self.facts["channels"])
        if image.ndim not in (3, 4) or image.shape[0] != channels:
            raise ValueError(f"expected an image (C, H, W) or (C, Z, Y, X) with C={channels} channels "
                             f"({', '.join(c['name'] for c in self.facts['channels'])}), got shape {image.shape}")
        flat = image.ndim == 3
        data = image[:, None] if flat else image  # nnU-Net treats a 2D image as one slice
        if spacing is None and not flat:
            raise ValueError("a volume needs its spacing to check its axis order and resolution: pass spacing=... in "
                             "the volume's axis order, (z, y, x) for (C, Z, Y, X) as nnU-Net's readers give it (NIfTI: "
                             "the header's zooms reversed)")
        if spacing is not None:
            self._check_spacing(spacing, flat)
        forward = self.facts.get("transpose_forward", [0, 1, 2])
        data = data.transpose([0, *[a + 1 for a in forward]]).astype(np.float32)
        labels = np.zeros(data.shape[1:], dtype=self.label_values.dtype)  # outside the crop: background
        data, bbox, inside = _crop_to_nonzero(data)
        for c, channel in enumerate(self.facts["channels"]):
            data[c] = normalize_channel(data[c], channel, inside)
        logits = self._sliding_window(data)
        labels[tuple(slice(lo, hi) for lo, hi in bbox)] = self.label_values[np.argmax(logits, axis=0)]
        labels = labels.transpose(self.facts.get("transpose_backward", [0, 1, 2]))
        return labels[0] if flat else labels

    def _check_spacing(self, spacing: Sequence[float], flat: bool) -> None:
        """The spacing, brought into nnU-Net's axis order (transpose_forward), against the configuration's;
        a mismatch that another axis order would fix is named as one."""
        given = [float(v) for v in spacing]
        if flat and len(given) == 2:
            given = [999.0, *given]  # nnU-Net's spacing of the slice axis of a natural image
        forward = self.facts.get("transpose_forward", [0, 1, 2])
        target = [float(v) for v in self.facts["spacing"]]
        if len(given) != len(forward):
            raise ValueError(f"spacing {list(spacing)} has {len(spacing)} values; the image has {len(forward)} "
                             f"spatial axes{' (or give the 2 in-plane ones)' if flat else ''}")

        def fits(order: Sequence[int]) -> bool:  # a 2d configuration's spacing covers the in-plane axes only
            return bool(np.allclose([given[order[a]] for a in forward][-len(target):], target, rtol=1e-3))

        if fits(range(len(given))):
            return
        if any(fits(order) for order in itertools.permutations(range(len(given)))):
            raise ValueError(f"image spacing {list(spacing)} fits the configuration's {target} only in another axis "
                             "order: the image's axes are not in the order the fold was trained on; give it (and its "
                             "spacing) as nnU-Net's readers do, (C, Z, Y, X) for a volume (NIfTI: the file's (x, y, z) "
                             f"reversed), with the dataset's orientation (transpose_forward {forward})")
        raise ValueError(f"image spacing {list(spacing)} differs from the configuration's {target} (in-plane, after "
                         f"transpose_forward {forward}): resample the image to that spacing first (nnUNetv2_predict "
                         "does it for you)")

    def _sliding_window(self, data: np.ndarray) -> np.ndarray:
        """Logits (K, *spatial) of a normalised, cropped case; a 2d configuration runs slice by slice."""
        spatial = data.shape[1:]
        in_plane = len(self.patch_size)
        padded, unpad = _pad_to(data, self.patch_size)
        steps = sliding_window_steps(padded.shape[-in_plane:], self.patch_size, self.tile_step_size)
        num_classes = len(self.label_values)
        total = np.zeros((num_classes, *padded.shape[1:]), np.float32)
        counts = np.zeros(padded.shape[1:], np.float32)
        outer = [range(padded.shape[1])] if in_plane < len(spatial) else []  # slices of a 2d configuration
        for position in itertools.product(*outer, *steps):
            lead, starts = position[:len(outer)], position[len(outer):]
            window = (*lead, *[slice(s, s + p) for s, p in zip(starts, self.patch_size)])
            patch = padded[(slice(None), *window)]
            total[(slice(None), *window)] += self._predict_patch(patch) * self.weights
            counts[window] += self.weights
        return (total / counts)[(slice(None), *unpad)]

    def _predict_patch(self, patch: np.ndarray) -> np.ndarray:
        """Mean logits over the patch and its mirrored copies (one batch)."""
        axes = [a + 1 for a in self.mirror_axes]  # patch axes: (C, *patch_size)
        flips = [()] + [c for n in range(1, len(axes) + 1) for c in itertools.combinations(axes, n)]
        batch = np.stack([np.flip(patch, f) if f else patch for f in flips]).astype(np.float32)
        logits = self.session.run(None, {"image": np.ascontiguousarray(batch)})[0]
        return np.mean([np.flip(out, f) if f else out for out, f in zip(logits, flips)], axis=0)


def normalize_channel(values: np.ndarray, channel: dict, inside: np.ndarray) -> np.ndarray:
    """nnU-Net's intensity normalisation of one channel; ``inside``: the nonzero region."""
    scheme, props = channel["normalization"], channel.get("intensity_properties", {})
    values = values.astype(np.float32)
    if scheme == "RGBTo01Normalization":
        return values / 255.0
    if scheme == "RescaleTo01Normalization":
        values = values - values.min()
        return values / max(float(values.max()), 1e-8)
    if scheme == "CTNormalization":
        values = np.clip(values, props["percentile_00_5"], props["percentile_99_5"])
        return (values - props["mean"]) / max(props["std"], 1e-8)
    if scheme == "ZScoreNormalization":
        if channel.get("use_mask_for_norm"):
            out = values.copy()
            out[inside] = (values[inside] - values[inside].mean()) / max(float(values[inside].std()), 1e-8)
            return out
        return (values - values.mean()) / max(float(values.std()), 1e-8)
    if scheme == "NoNormalization":
        return values
    raise ValueError(f"channel {channel['name']!r} uses {scheme}, which this predictor does not implement: "
                     "normalise the channel yourself or use nnUNetv2_predict")


def sliding_window_steps(image_size: Sequence[int], patch_size: Sequence[int], step: float) -> list[list[int]]:
    """Window starts per axis: patches at most ``step`` patches apart, the last one flush with the edge."""
    starts = []
    for size, patch in zip(image_size, patch_size):
        count = int(np.ceil((size - patch) / (patch * step))) + 1
        stride = (size - patch) / (count - 1) if count > 1 else 0
        starts.append([int(np.round(stride * i)) for i in range(count)])
    return starts


def gaussian_weights(patch_size: Sequence[int], sigma_scale: float = 1 / 8) -> np.ndarray:
    """Per-pixel window weights: a Gaussian peaked at the patch centre, never zero."""
    impulse = np.zeros(patch_size)
    impulse[tuple(p // 2 for p in patch_size)] = 1
    weights = gaussian_filter(impulse, [p * sigma_scale for p in patch_size], 0, mode="constant", cval=0)
    weights = (weights / weights.max()).astype(np.float32)
    weights[weights == 0] = weights[weights > 0].min()
    return weights


def _crop_to_nonzero(data: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]], np.ndarray]:
    """The bounding box of the (hole-filled) nonzero region, as nnU-Net's preprocessing crops it."""
    mask = binary_fill_holes(np.any(data != 0, axis=0))
    if not mask.any():  # an all-zero image keeps its full extent
        mask = np.ones_like(mask)
    bbox = [(int(np.min(idx)), int(np.max(idx)) + 1) for idx in np.nonzero(mask)]
    window = tuple(slice(lo, hi) for lo, hi in bbox)
    return np.ascontiguousarray(data[(slice(None), *window)]), bbox, mask[window]


def _pad_to(data: np.ndarray, patch_size: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad the last axes up to the patch size, centred (larger half after); and the undoing slices."""
    lead = data.ndim - 1 - len(patch_size)
    pads = [(0, 0)] * (1 + lead)
    for size, patch in zip(data.shape[1 + lead:], patch_size):
        extra = max(patch - size, 0)
        pads.append((extra // 2, extra - extra // 2))
    padded = np.pad(data, pads)
    return padded, tuple(slice(lo, padded.shape[i + 1] - hi) for i, (lo, hi) in enumerate(pads[1:]))


def _label_values(labels: dict) -> np.ndarray:
    values = sorted(int(v) for v in labels.values() if not isinstance(v, (list, tuple)))
    if len(values) != len(labels):
        raise ValueError("region-based labels (lists of label values) are not supported by this predictor")
    return np.asarray(values, dtype=np.uint8 if max(values) < 256 else np.uint16)


# -- the command: nnU-Net's file types ------------------------------------------------------

NATURAL_ENDINGS = (".png", ".bmp")  # NaturalImage2DIO (".tif" too, when the file is 2D)
VOLUME_ENDINGS = (".nii.gz", ".nii", ".tiff")  # NibabelIO / SimpleITKIO, Tiff3DIO
_PACKAGES = {".png": ("PIL", "pillow"), ".bmp": ("PIL", "pillow"), ".tif": ("tifffile", "tifffile"),
             ".tiff": ("tifffile", "tifffile"), ".nii": ("nibabel", "nibabel"), ".nii.gz": ("nibabel", "nibabel")}


def read_case(files: Sequence[str | Path], ending: str) -> tuple[np.ndarray, tuple[float, ...], dict]:
    """One case's channel files (``case_0000``, ``case_0001``, ...) as nnU-Net's reader for ``ending``
    gives them: a natural image ``(C, H, W)`` with spacing ``(1, 1)``, or a volume ``(C, Z, Y, X)`` and
    its spacing in that order; and what :func:`write_labels` needs to write the labels in its geometry."""
    _require(ending)
    planes, spacings, geometry = [], [], {}
    for file in map(str, files):
        if ending in NATURAL_ENDINGS:
            from PIL import Image

            array, spacing = _natural(np.asarray(Image.open(file)), file), (1.0, 1.0)
        elif ending in (".nii", ".nii.gz"):
            import nibabel

            volume = nibabel.load(file)
            if volume.ndim != 3:
                raise ValueError(f"{file}: a {volume.ndim}D NIfTI; nnU-Net reads 3D volumes, one file per channel")
            array = np.asarray(volume.get_fdata(), np.float32).transpose(2, 1, 0)[None]  # (x, y, z) -> (1, z, y, x)
            spacing = tuple(float(v) for v in volume.header.get_zooms()[::-1])
            geometry = {"affine": volume.affine, "header": volume.header}
        elif ending in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(file)
            if ending == ".tif" and (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
                array, spacing = _natural(array, file), (1.0, 1.0)
            elif array.ndim == 3:  # Tiff3DIO: (z, y, x), spacing from case.json beside it
                spacing = _tiff_spacing(Path(file), ending)
                array, geometry = array[None].astype(np.float32), {"spacing": list(spacing)}
            else:
                raise ValueError(f"{file}: a TIFF of shape {array.shape}; nnU-Net reads 2D images (H, W[, 3 or 4]) "
                                 "or 3D volumes (Z, Y, X)")
        else:
            raise ValueError(f"this predictor reads {', '.join(_PACKAGES)} files, as nnU-Net does; {ending} needs "
                             "SimpleITK: use nnUNetv2_predict")
        planes.append(array)
        spacings.append(spacing)
    if len({p.shape[1:] for p in planes}) > 1 or len(set(spacings)) > 1:
        raise ValueError(f"the channel files {[str(f) for f in files]} differ in shape or spacing: "
                         f"{[p.shape[1:] for p in planes]}, {spacings}")
    image = np.concatenate(planes).astype(np.float32)
    return image, spacings[0], geometry


def write_labels(labels: np.ndarray, path: str | Path, ending: str, geometry: dict) -> None:
    """Labels in ``ending``'s format, as nnU-Net writes them: the input's geometry for a NIfTI, a
    ``case.json`` spacing file beside a 3D TIFF."""
    path = Path(path)
    if ending in NATURAL_ENDINGS:
        from PIL import Image

        Image.fromarray(labels).save(path)
    elif ending in (".nii", ".nii.gz"):
        import nibabel

        header = geometry["header"].copy()
        header.set_data_dtype(labels.dtype)
        header.set_slope_inter(1, 0)
        nibabel.save(nibabel.Nifti1Image(labels.transpose(2, 1, 0), geometry["affine"], header), str(path))
    else:
        import tifffile

        tifffile.imwrite(path, labels, compression="zlib" if labels.ndim == 3 else None)
        if labels.ndim == 3:
            path.with_name(path.name[:-len(ending)] + ".json").write_text(json.dumps({"spacing": geometry["spacing"]}))


def _natural(array: np.ndarray, file: str) -> np.ndarray:
    """NaturalImage2DIO: (H, W) grey or (H, W, 3 or 4) RGB(A) -> channels first."""
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return array.transpose(2, 0, 1).astype(np.float32)
    if array.ndim == 2:
        return array[None].astype(np.float32)
    raise ValueError(f"{file}: an image of shape {array.shape}; nnU-Net reads (H, W) or (H, W, 3 or 4)")


def _tiff_spacing(file: Path, ending: str) -> tuple[float, ...]:
    """Tiff3DIO's spacing file: ``case.json`` for ``case_0000.tif``; (1, 1, 1) without one, as nnU-Net assumes."""
    aux = file.with_name(file.name[:-len(ending) - 5] + ".json")
    if not aux.is_file():
        print(f"no spacing file {aux.name} beside {file.name}: assuming spacing (1, 1, 1), as nnU-Net does",
              file=sys.stderr)
        return (1.0, 1.0, 1.0)
    return tuple(float(v) for v in json.loads(aux.read_text())["spacing"])


def _require(ending: str) -> None:
    module, package = _PACKAGES.get(ending, (None, None))
    if module is not None and importlib.util.find_spec(module) is None:
        raise ImportError(f"reading {ending} files needs {module}: pip install {package}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Predict a folder of cases with an exported nnU-Net fold, reading "
                                                 "and writing the file type of the fold's dataset as nnU-Net does.")
    parser.add_argument("onnx", help="the ONNX file written by `segzoo-nnunet export` (its .json beside it)")
    parser.add_argument("-i", required=True, help="folder of case_0000<ending>, case_0001<ending>, ... (one file per "
                                                  "channel; <ending> as in the fold's dataset, e.g. .png or .nii.gz)")
    parser.add_argument("-o", required=True, help="output folder for case<ending> label maps")
    args = parser.parse_args(argv)
    try:
        predictor = OnnxFoldPredictor(args.onnx)
        _predict_folder(predictor, Path(args.i), Path(args.o))
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"onnx_predict: error: {err}", file=sys.stderr)
        return 2
    return 0


def _predict_folder(predictor: OnnxFoldPredictor, folder: Path, out: Path) -> None:
    ending = predictor.facts.get("file_ending", ".png")  # exports before the JSON recorded it: PNG datasets
    reader = predictor.facts.get("image_reader", "by file ending")
    if "Reorient" in reader:
        raise ValueError(f"the fold's dataset reads its images with {reader}, which reorients them; this predictor "
                         "reads them as stored: use nnUNetv2_predict")
    cases = sorted(p.name[:-len("_0000" + ending)] for p in folder.glob(f"*_0000{ending}"))
    if not cases:
        found = sorted({"".join(p.suffixes) for p in folder.glob("*_0000.*")})
        raise FileNotFoundError(f"no *_0000{ending} images in {folder} (the fold's dataset has {ending} files)"
                                + (f"; found {', '.join(found)}" if found else ""))
    out.mkdir(parents=True, exist_ok=True)
    for n, case in enumerate(cases, 1):
        # as nnU-Net lists a case: every case_XXXX file (an RGB image is one file of three channels)
        files = sorted(folder.glob(f"{glob.escape(case)}_[0-9][0-9][0-9][0-9]{ending}"))
        try:
            image, spacing, geometry = read_case(files, ending)
            flat = image.ndim == 3
            labels = predictor.predict(image, spacing=spacing)
        except ValueError as err:
            raise ValueError(f"case {case}: {err}") from None
        write_labels(labels, out / f"{case}{ending}", ending, geometry if not flat else {})
        print(f"[{n}/{len(cases)}] {case}{ending}")


if __name__ == "__main__":
    raise SystemExit(main())
