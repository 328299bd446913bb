"""``segzoo-nnunet demo``: the whole nnU-Net path in a few CPU minutes, with nothing to download.

Writes a synthetic fundus dataset (vessels + optic disc) in nnU-Net's raw format, runs
nnU-Net's fingerprinting, planning and preprocessing, adds a zoo configuration, trains a
small SegFormer-on-ViT briefly and nnU-Net's own 2d U-Net for the same epochs and
iterations, predicts the held-out cases with nnU-Net's predictor, prints both models' Dice
per class, writes image / truth / prediction side by side as a PNG and the
``segzoo-nnunet compare`` report of the two runs. All nnU-Net folders live under
``--out``; the user's own nnU-Net folders are not touched.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw

from .. import ensure_ext_trainer_path
from ..config import load_config
from ..plans import plan
from ..report.compare import gather
from ..report.compare_report import format_text, write_report
from ..trainer_lookup import bridge_trainers_resolved
from .synthetic import LABELS, write_fundus_dataset

__all__ = ["DEMO_DATASET_ID", "demo_config", "run_demo", "dice_per_class"]

DEMO_DATASET_ID = 999
ZOO_TRAINER = "nnUNetTrainerSegZoo"
VAL_ITERATIONS = 3  # pseudo-Dice batches per epoch, for both models
NUM_TEST = 6
_COLOURS = {LABELS["vessel"]: (255, 255, 255), LABELS["optic_disc"]: (255, 220, 0)}


def demo_config(epochs: int, iterations: int) -> dict:
    """A ViT small enough for two CPU cores (4 blocks, width 96) under a SegFormer head, from scratch."""
    return {
        "model": {
            "name": "segformer_dinov3_small",
            "pretrained": False,  # no downloads: random initialisation
            "decoder_hidden_size": 64,
            "kwargs": {"backbone_kwargs": {"depth": 4, "embed_dim": 96, "num_heads": 3}},
        },
        "lora": {"enabled": False},  # LoRA is for pretrained backbones
        "train": {
            "initial_lr": 1e-3,
            "num_epochs": epochs,
            "num_iterations_per_epoch": iterations,
            "num_val_iterations_per_epoch": VAL_ITERATIONS,
            "warmup_epochs": 1 if epochs > 1 else 0,
            "batch_size": 8,
            "save_every": 1,
        },
    }


def run_demo(out: str | Path = "./demo_output", epochs: int = 15, iterations: int = 25, num_train: int = 24,
             size: int = 128, device: str = "cpu", seed: int = 0) -> dict[str, float]:
    """Run the demo; returns the held-out Dice per class name."""
    start = time.time()
    out = Path(out).resolve()
    folders = {key: out / key for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for key, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[key] = str(folder)
    workers = max(1, min(2, os.cpu_count() or 1))
    os.environ.setdefault("nnUNet_def_n_proc", str(workers))

    _step(1, f"writing {num_train} + {NUM_TEST} synthetic fundus images ({size}x{size}) to {folders['nnUNet_raw']}")
    raw = write_fundus_dataset(folders["nnUNet_raw"], DEMO_DATASET_ID, num_train=num_train, num_test=NUM_TEST,
                               size=size, seed=seed)

    _step(2, "nnU-Net fingerprint, plans and 2d preprocessing")
    # nnU-Net reads nnUNet_def_n_proc once, when first imported: only now, with it set above
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess

    os.environ["nnUNet_n_proc_DA"] = str(workers)  # nnU-Net's planner needs >= 1
    extract_fingerprints([DEMO_DATASET_ID], num_processes=workers, check_dataset_integrity=True)
    plan_experiments([DEMO_DATASET_ID])
    preprocess([DEMO_DATASET_ID], configurations=("2d",), num_processes=(workers,))

    _step(3, "adding the zoo configuration to the plans")
    config_file = out / "demo_config.yaml"
    config_file.write_text(yaml.safe_dump(demo_config(epochs, iterations), sort_keys=False))
    configuration = plan(DEMO_DATASET_ID, load_config(config_file))

    _step(4, f"training {configuration} for {epochs} epochs x {iterations} iterations on {device}")
    from nnunetv2.run.run_training import run_training  # after nnUNet_def_n_proc, as above

    from .baseline import train_nnunet_baseline  # imports nnU-Net's training too

    ensure_ext_trainer_path()
    os.environ["nnUNet_n_proc_DA"] = "0"  # augment in-process: worker processes only compete for 2 cores
    with bridge_trainers_resolved():  # every trainer lookup of the demo goes through the bridge's guard
        run_training(str(DEMO_DATASET_ID), configuration, 0, ZOO_TRAINER, device=torch.device(device))

        _step(5, f"training nnU-Net's own 2d U-Net (nnUNetTrainer) for the same {epochs} epochs x {iterations} "
                 "iterations")
        train_nnunet_baseline(DEMO_DATASET_ID, 0, epochs, iterations, VAL_ITERATIONS, device=device)

    _step(6, f"predicting the {NUM_TEST} held-out images with both models")
    predictions, unet_predictions = out / "predictions", out / "predictions_unet"
    _predict(ZOO_TRAINER, configuration, raw / "imagesTs", predictions, torch.device(device))
    _predict("nnUNetTrainer", "2d", raw / "imagesTs", unet_predictions, torch.device(device))
    dice = dice_per_class(raw / "labelsTs", predictions)
    unet_dice = dice_per_class(raw / "labelsTs", unet_predictions)
    figure = out / "demo_predictions.png"
    _write_figure(raw, predictions, figure, dice)

    _step(7, "comparing the two runs on fold 0's validation cases (segzoo-nnunet compare)")
    comparison = gather(DEMO_DATASET_ID, [configuration, "2d"], folds=[0])
    print(format_text(comparison))
    report = write_report(comparison, out / "comparison")

    print(f"\nHeld-out Dice per class ({NUM_TEST} images):")
    print(f"  {'':<12} {configuration:>26} {'nnU-Net 2d U-Net':>18}")
    for name, value in dice.items():
        print(f"  {name:<12} {value:>26.3f} {unet_dice[name]:>18.3f}")
    print(f"\nSide-by-side image / truth / prediction ({configuration}): {figure}")
    print(f"Comparison report: {report['markdown']} (picture: {report['figure']})")
    print(f"Trained models (nnU-Net results folder): {folders['nnUNet_results']}")
    print(f"Total time: {time.time() - start:.0f} s")
    return dice


def dice_per_class(truth_folder: Path, prediction_folder: Path) -> dict[str, float]:
    """Dice of every foreground class over all held-out pixels together."""
    names = {value: name for name, value in LABELS.items() if value}
    tp = dict.fromkeys(names, 0)
    total = dict.fromkeys(names, 0)
    for truth_file in sorted(truth_folder.glob("*.png")):
        truth = np.asarray(Image.open(truth_file))
        pred = np.asarray(Image.open(prediction_folder / truth_file.name))
        for value in names:
            tp[value] += int(((truth == value) & (pred == value)).sum())
            total[value] += int((truth == value).sum() + (pred == value).sum())
    return {names[v]: (2 * tp[v] / total[v] if total[v] else float("nan")) for v in names}


# -- helpers ---------------------------------------------------------------------------


def _step(number: int, text: str) -> None:
    print(f"\n[segzoo demo {number}/7] {text}", flush=True)


def _predict(trainer: str, configuration: str, images: Path, output: Path, device) -> None:
    # after run_demo set nnUNet_def_n_proc (nnU-Net reads it when first imported)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    predictor = nnUNetPredictor(device=device, perform_everything_on_device=device.type == "cuda",
                                allow_tqdm=False, verbose=False)
    with bridge_trainers_resolved():  # nnU-Net looks the trainer up by name in here
        predictor.initialize_from_trained_model_folder(
            get_output_folder(DEMO_DATASET_ID, trainer, "nnUNetPlans", configuration),
            use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    # in this process: worker processes would only compete for the cores (what -npp 0 -nps 0 does)
    output.mkdir(parents=True, exist_ok=True)  # the sequential path does not create it
    predictor.predict_from_files_sequential(str(images), str(output), save_probabilities=False, overwrite=True)


def _write_figure(raw: Path, predictions: Path, path: Path, dice: dict[str, float], rows: int = 4,
                  zoom: int = 2) -> None:
    """Held-out cases as rows of image / truth / prediction, titled, with the Dice underneath."""
    tiles = []
    for image_file in sorted((raw / "imagesTs").glob("*_0000.png"))[:rows]:
        case = image_file.name[: -len("_0000.png")]
        image = np.asarray(Image.open(image_file).convert("RGB"))
        truth = np.asarray(Image.open(raw / "labelsTs" / f"{case}.png"))
        pred = np.asarray(Image.open(predictions / f"{case}.png"))
        tiles.append(np.concatenate([image, _colour(truth), _colour(pred)], axis=1))
    grid = np.concatenate(tiles, axis=0)
    picture = Image.fromarray(grid).resize((grid.shape[1] * zoom, grid.shape[0] * zoom), Image.NEAREST)
    header, footer = 24, 24
    canvas = Image.new("RGB", (picture.width, picture.height + header + footer), "white")
    canvas.paste(picture, (0, header))
    draw = ImageDraw.Draw(canvas)
    column = picture.width // 3
    for i, title in enumerate(("image", "truth", "prediction")):
        draw.text((i * column + column // 2, header // 2), title, fill="black", anchor="mm")
    scores = ", ".join(f"{name} {value:.3f}" for name, value in dice.items())
    draw.text((picture.width // 2, header + picture.height + footer // 2), f"held-out Dice: {scores}",
              fill="black", anchor="mm")
    canvas.save(path)


def _colour(label: np.ndarray) -> np.ndarray:
    out = np.zeros((*label.shape, 3), np.uint8)
    for value, colour in _COLOURS.items():
        out[label == value] = colour
    return out
