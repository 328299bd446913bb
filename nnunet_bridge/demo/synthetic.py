"""A small synthetic 2D dataset in nnU-Net's raw format: fundus-like photographs.

Each image is a bright orange disc (the field of view) on black, with an optic disc and
a tree of dark vessels growing from it; labels are 0 background, 1 vessel, 2 optic disc.
Deterministic for a given seed and fast (no downloads), so the demo and the tests can
train on data that has thin structures and a blob, the two things fundus models segment.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["LABELS", "fundus_case", "write_fundus_dataset"]

LABELS = {"background": 0, "vessel": 1, "optic_disc": 2}


def fundus_case(size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One ``(size, size, 3)`` uint8 RGB image and its ``(size, size)`` uint8 label map."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = size / 2 + rng.uniform(-0.03, 0.03, 2) * size
    radius = size * rng.uniform(0.44, 0.48)
    dist = np.hypot(yy - centre[0], xx - centre[1]) / radius
    fov = dist <= 1.0

    # retina: orange-red, darker towards the rim, with smooth blotches
    base = np.array([0.78, 0.36, 0.16]) * rng.uniform(0.85, 1.1)
    vignette = np.clip(1.05 - 0.45 * dist**2, 0, 1)
    blotch = _smooth_noise(rng, size, scale=max(4, size // 8)) * 0.12
    image = (base[None, None] * (vignette + blotch)[..., None]).astype(np.float32)

    # optic disc on the left or right of the centre
    side = rng.choice([-1, 1])
    disc = centre + np.array([rng.uniform(-0.08, 0.08), side * rng.uniform(0.2, 0.28)]) * size
    disc_r = size * rng.uniform(0.06, 0.08)
    disc_dist = np.hypot(yy - disc[0], xx - disc[1]) / disc_r
    disc_mask = disc_dist <= 1.0

    vessels = _vessel_tree(rng, size, disc, disc_r, side)
    vessels &= fov
    label = np.zeros((size, size), np.uint8)
    label[vessels] = LABELS["vessel"]
    label[disc_mask & fov] = LABELS["optic_disc"]

    image[vessels] = image[vessels] * 0.45 + np.array([0.35, 0.05, 0.04]) * 0.55
    glow = np.clip(1.3 - disc_dist, 0, 1)[..., None]
    image = image * (1 - glow) + np.array([0.98, 0.88, 0.58]) * glow
    image += rng.normal(0, 0.025, image.shape)
    image[~fov] = 0.0
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), label


def write_fundus_dataset(
    raw_folder: str | Path,
    dataset_id: int = 990,
    name: str = "SyntheticFundus",
    num_train: int = 8,
    num_test: int = 2,
    size: int = 64,
    channels: int = 3,
    seed: int = 0,
) -> Path:
    """Write ``Dataset{id}_{name}`` with imagesTr/labelsTr/imagesTs/labelsTs and dataset.json.

    ``channels=3`` writes RGB PNGs whose channels are named ``rgb_to_0_1`` (nnU-Net scales
    them to [0, 1] and the network applies the backbone's mean/std); ``channels=1`` writes
    the green channel (a red-free photograph), z-scored by nnU-Net.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    folder = Path(raw_folder) / f"Dataset{dataset_id:03d}_{name}"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for index in range(num_train + num_test):
        image, label = fundus_case(size, seed=seed * 100_003 + index)
        if channels == 1:
            image = image[..., 1]
        split = "Tr" if index < num_train else "Ts"
        case = f"fundus_{index:03d}"
        Image.fromarray(image).save(folder / f"images{split}" / f"{case}_0000.png")
        Image.fromarray(label).save(folder / f"labels{split}" / f"{case}.png")
    channel_names = {str(c): "rgb_to_0_1" for c in range(3)} if channels == 3 else {"0": "green"}
    write_dataset_json(folder, channel_names, LABELS, num_train, ".png", name,
                       "synthetic fundus-like photographs (segzoo nnunet_bridge.demo.synthetic)")
    return folder


def write_dataset_json(folder: Path, channel_names: dict[str, str], labels: dict[str, int], num_train: int,
                       file_ending: str, name: str, description: str) -> None:
    """nnU-Net's ``dataset.json`` of a raw dataset folder."""
    dataset_json = {"channel_names": channel_names, "labels": labels, "numTraining": num_train,
                    "file_ending": file_ending, "name": name, "description": description}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))


# -- helpers ---------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    coarse = rng.normal(0, 1, (size // scale + 2, size // scale + 2)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _vessel_tree(rng: np.random.Generator, size: int, disc: np.ndarray, disc_r: float, side: int) -> np.ndarray:
    """Arcades leaving the disc above and below, towards the far side, branching as they go."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    width0 = max(1, round(size / 48))
    stack = []
    for vertical in (-1, 1):
        for spread in (0.35, 1.1):
            angle = np.arctan2(vertical * spread, -side)
            stack.append((disc[1], disc[0], angle, width0 + (spread < 1), size * 0.9))
    while stack:
        x, y, angle, width, length = stack.pop()
        points = [(x, y)]
        step = max(2.0, size / 40)
        for _ in range(int(length / step)):
            angle += rng.normal(0, 0.18)
            x, y = x + step * np.cos(angle), y + step * np.sin(angle)
            points.append((x, y))
            if width > 1 and rng.random() < 0.06:
                stack.append((x, y, angle + rng.choice([-1, 1]) * rng.uniform(0.5, 0.9), width - 1, length * 0.5))
        draw.line(points, fill=1, width=int(width))
    return np.asarray(canvas, dtype=bool)
