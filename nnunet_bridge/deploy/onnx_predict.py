"""Predict with an exported fold (``segzoo-nnunet export``) as ``nnUNetv2_predict`` does, on ONNX Runtime.

Needs numpy, scipy and onnxruntime only (no torch, no nnU-Net): this file can be copied
to a deployment. The steps follow nnU-Net's defaults, read from the JSON written beside
the ONNX file: transpose, crop to the nonzero bounding box, per-channel intensity
normalisation, sliding window (half-patch overlap, Gaussian weights, mirroring), argmax,
then the crop and transpose undone. Images must already be at the configuration's
spacing (nnU-Net would resample; natural images and most 2D data need none)::

    predictor = OnnxFoldPredictor("fold0.onnx")          # reads fold0.json
    labels = predictor.predict(image)                     # image (C, H, W) or (C, Z, Y, X)

``python -m nnunet_bridge.deploy.onnx_predict fold0.onnx -i imagesTs -o predictions`` does this
for a folder of PNG images named as nnU-Net names them (``case_0000.png``).
"""

from __future__ import annotations

import argparse
import itertools
import json
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

        ``spacing``, if given, is checked against the configuration's (this predictor does not resample).
        """
        channels = len(self.facts["channels"])
        if image.ndim not in (3, 4) or image.shape[0] != channels:
            raise ValueError(f"expected an image (C, H, W) or (C, Z, Y, X) with C={channels} channels "
                             f"({', '.join(c['name'] for c in self.facts['channels'])}), got shape {image.shape}")
        flat = image.ndim == 3
        data = image[:, None] if flat else image  # nnU-Net treats a 2D image as one slice
        self._check_spacing(spacing, data.ndim - 1)
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

    def _check_spacing(self, spacing: Sequence[float] | None, ndim: int) -> None:
        if spacing is None:
            return
        target = list(self.facts["spacing"])
        in_plane = list(spacing)[-len(target):]  # a 2d configuration keeps the slice axis as it is
        if not np.allclose(in_plane, target, rtol=1e-3):
            raise ValueError(f"image spacing {list(spacing)} differs from the configuration's {target}: resample "
                             "the image to that spacing first (nnUNetv2_predict does it for you)")

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


def main(argv: Sequence[str] | None = None) -> int:
    from PIL import Image  # reads the PNG folders of this command only, not a dependency of predict()

    parser = argparse.ArgumentParser(description="Predict a folder of PNG images with an exported nnU-Net fold.")
    parser.add_argument("onnx", help="the ONNX file written by `segzoo-nnunet export` (its .json beside it)")
    parser.add_argument("-i", required=True, help="folder of case_0000.png, case_0001.png, ... (one file per channel)")
    parser.add_argument("-o", required=True, help="output folder for case.png label maps")
    args = parser.parse_args(argv)
    predictor = OnnxFoldPredictor(args.onnx)
    out = Path(args.o)
    out.mkdir(parents=True, exist_ok=True)
    cases = sorted({p.name.rsplit("_", 1)[0] for p in Path(args.i).glob("*_0000.png")})
    if not cases:
        raise SystemExit(f"no *_0000.png images in {args.i}")
    for n, case in enumerate(cases, 1):
        files = sorted(Path(args.i).glob(f"{case}_[0-9][0-9][0-9][0-9].png"))
        planes = [np.asarray(Image.open(f)) for f in files]
        image = np.concatenate([p.transpose(2, 0, 1) if p.ndim == 3 else p[None] for p in planes])
        Image.fromarray(predictor.predict(image)).save(out / f"{case}.png")
        print(f"[{n}/{len(cases)}] {case}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
