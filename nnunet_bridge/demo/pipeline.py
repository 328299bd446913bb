"""``segzoo-nnunet demo``: the whole nnU-Net path in a few CPU minutes.

Writes a synthetic fundus dataset (vessels + optic disc) in nnU-Net's raw format, runs
nnU-Net's fingerprinting, planning and preprocessing, adds a zoo configuration, trains a zoo
model briefly and nnU-Net's own 2d U-Net for the same epochs and iterations, predicts the
held-out cases with nnU-Net's predictor, prints both models' Dice per class, writes image /
truth / prediction side by side as a PNG and the ``segzoo-nnunet compare`` report of the two
runs. All nnU-Net folders live under ``--out``; the user's own nnU-Net folders are not touched.

By default the zoo model is a small ViT SegFormer trained from random weights (nothing to
download); ``pretrained=True`` (``--pretrained``) downloads a backbone's published weights and
fine-tunes them the same way.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw

import segzoo
from segzoo._hub import download_backbone_weights
from segzoo.backbones import get_backbone_spec, published_weights_source

from .. import ensure_ext_trainer_path
from ..config import load_config
from ..plans import plan
from ..report.compare import gather
from ..report.compare_report import format_text, write_report
from ..trainer_lookup import bridge_trainers_resolved
from .synthetic import LABELS, write_fundus_dataset

__all__ = ["DEMO_DATASET_ID", "PRETRAINED_MODEL", "SCRATCH_BACKBONE", "demo_config", "run_demo", "dice_per_class"]

DEMO_DATASET_ID = 999
DEMO_DATASET = "SyntheticFundus"
ZOO_TRAINER = "nnUNetTrainerSegZoo"
VAL_ITERATIONS = 3  # pseudo-Dice batches per epoch, for both models
NUM_TEST = 6
SCRATCH_MODEL = "segformer_dinov3_small"
# 4 blocks of width 96 on 8-pixel patches: a 16x16 token grid on the 128-pixel images, and a feature
# pyramid down to 2-pixel strides, fine enough for 1-4 px vessels (16-pixel patches give an 8x8 grid)
SCRATCH_BACKBONE = {"depth": 4, "embed_dim": 96, "num_heads": 3, "patch_size": 8}
SCRATCH_SIZE = 128
PRETRAINED_MODEL = "segformer_dinov3_small"  # DINOv3 ViT-S/16, 22M parameters
PRETRAINED_SIZE = 256  # the published backbones use 16-pixel patches: a 16x16 grid at 256 px
_COLOURS = {LABELS["vessel"]: (255, 255, 255), LABELS["optic_disc"]: (255, 220, 0)}


def demo_config(epochs: int, iterations: int, pretrained: bool = False, model: str | None = None,
                model_kwargs: dict | None = None) -> dict:
    """The demo's bridge configuration: a small ViT under a SegFormer head from scratch (4 blocks of
    width 96 on 8-pixel patches, about 0.5M parameters), or ``model``'s published weights fine-tuned
    in full (``pretrained``; default :data:`PRETRAINED_MODEL`). ``model_kwargs`` replace the model's
    ``create_model`` keywords (e.g. ``{"backbone_kwargs": {...}}`` for another size)."""
    if pretrained:
        name, tag = segzoo.split_model_name_tag(model or PRETRAINED_MODEL)
        model_section = {"name": name, "pretrained": True, "pretrained_tag": tag, "kwargs": dict(model_kwargs or {})}
    else:
        if model is not None:
            raise ValueError("model= names the pretrained model to fine-tune; pass pretrained=True as well "
                             "(the default demo trains a small ViT from scratch)")
        model_section = {
            "name": SCRATCH_MODEL,
            "pretrained": False,  # no downloads: random initialisation
            "decoder_hidden_size": 64,
            "kwargs": dict(model_kwargs) if model_kwargs is not None else {"backbone_kwargs": dict(SCRATCH_BACKBONE)},
        }
    return {
        "model": model_section,
        "lora": {"enabled": False},  # the whole model trains, as in the from-scratch run
        "train": {
            # null: the bridge's fine-tuning rate for published weights (1e-4)
            "initial_lr": None if pretrained else 1e-3,
            "num_epochs": epochs,
            "num_iterations_per_epoch": iterations,
            "num_val_iterations_per_epoch": VAL_ITERATIONS,
            "warmup_epochs": 1 if epochs > 1 else 0,
            "batch_size": 8,
            "save_every": 1,
        },
    }


def run_demo(out: str | Path = "./demo_output", epochs: int = 10, iterations: int = 25, num_train: int = 24,
             size: int | None = None, device: str = "cpu", seed: int = 0, pretrained: bool = False,
             model: str | None = None, model_kwargs: dict | None = None) -> dict[str, float]:
    """Run the demo; returns the zoo model's held-out Dice per class name.

    ``size`` defaults to 128 px from scratch and 256 px with ``pretrained`` (see
    :func:`demo_config` for ``model`` and ``model_kwargs``). A run replaces the previous demo
    run's dataset and results under ``out``."""
    start = time.time()
    config = demo_config(epochs, iterations, pretrained, model, model_kwargs)
    size = size or (PRETRAINED_SIZE if pretrained else SCRATCH_SIZE)
    weights = _published_weights(config) if pretrained else None  # an unknown name fails before any work
    out = Path(out).resolve()
    folders = {key: out / key for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for key, folder in folders.items():
        # a new dataset makes the last run's preprocessed data and models stale (a new size would not even fit)
        shutil.rmtree(folder / f"Dataset{DEMO_DATASET_ID:03d}_{DEMO_DATASET}", ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[key] = str(folder)
    workers = max(1, min(2, os.cpu_count() or 1))
    os.environ.setdefault("nnUNet_def_n_proc", str(workers))
    steps = _Steps(8 if pretrained else 7)

    if weights is not None:
        steps(f"downloading the published backbone weights of {config['model']['name']}.{weights.tag} from the "
              f"Hugging Face Hub ({weights.hf_hub_id}; cached after the first run)")
        print(download_backbone_weights(weights), flush=True)  # the trainer loads this cached file

    steps(f"writing {num_train} + {NUM_TEST} synthetic fundus images ({size}x{size}) to {folders['nnUNet_raw']}")
    raw = write_fundus_dataset(folders["nnUNet_raw"], DEMO_DATASET_ID, DEMO_DATASET, num_train=num_train,
                               num_test=NUM_TEST, size=size, seed=seed)

    steps("nnU-Net fingerprint, plans and 2d preprocessing")
    # nnU-Net reads nnUNet_def_n_proc once, when first imported: only now, with it set above
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess

    os.environ["nnUNet_n_proc_DA"] = str(workers)  # nnU-Net's planner needs >= 1
    extract_fingerprints([DEMO_DATASET_ID], num_processes=workers, check_dataset_integrity=True)
    plan_experiments([DEMO_DATASET_ID])
    preprocess([DEMO_DATASET_ID], configurations=("2d",), num_processes=(workers,))

    steps("adding the zoo configuration to the plans")
    config_file = out / "demo_config.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    configuration = plan(DEMO_DATASET_ID, load_config(config_file))
    start_from = "its published weights" if pretrained else "random weights"

    steps(f"training {configuration} from {start_from} for {epochs} epochs x {iterations} iterations on {device}")
    from nnunetv2.run.run_training import run_training  # after nnUNet_def_n_proc, as above

    from .baseline import train_nnunet_baseline  # imports nnU-Net's training too

    ensure_ext_trainer_path()
    os.environ["nnUNet_n_proc_DA"] = "0"  # augment in-process: worker processes only compete for 2 cores
    with bridge_trainers_resolved():  # every trainer lookup of the demo goes through the bridge's guard
        run_training(str(DEMO_DATASET_ID), configuration, 0, ZOO_TRAINER, device=torch.device(device))

        steps(f"training nnU-Net's own 2d U-Net (nnUNetTrainer) for the same {epochs} epochs x {iterations} "
              "iterations")
        train_nnunet_baseline(DEMO_DATASET_ID, 0, epochs, iterations, VAL_ITERATIONS, device=device)

    steps(f"predicting the {NUM_TEST} held-out images with both models")
    predictions, unet_predictions = out / "predictions", out / "predictions_unet"
    _predict(ZOO_TRAINER, configuration, raw / "imagesTs", predictions, torch.device(device))
    _predict("nnUNetTrainer", "2d", raw / "imagesTs", unet_predictions, torch.device(device))
    dice = dice_per_class(raw / "labelsTs", predictions)
    unet_dice = dice_per_class(raw / "labelsTs", unet_predictions)
    figure = out / "demo_predictions.png"
    _write_figure(raw, predictions, figure, dice)

    steps("comparing the two runs on fold 0's validation cases (segzoo-nnunet compare)")
    comparison = gather(DEMO_DATASET_ID, [configuration, "2d"], folds=[0])
    print(format_text(comparison))
    report = write_report(comparison, out / "comparison")

    zoo_column = f"{configuration} ({'pretrained' if pretrained else 'random init'})"
    print(f"\nHeld-out Dice per class ({NUM_TEST} images):")
    print(f"  {'':<12} {zoo_column:>{max(26, len(zoo_column))}} {'nnU-Net 2d U-Net':>18}")
    for name, value in dice.items():
        print(f"  {name:<12} {value:>{max(26, len(zoo_column))}.3f} {unet_dice[name]:>18.3f}")
    print(f"\nSide-by-side image / truth / prediction ({configuration}): {figure}")
    print(f"Comparison report: {report['markdown']} (picture: {report['figure']})")
    print(f"Trained models (nnU-Net results folder): {folders['nnUNet_results']}")
    if not pretrained:
        print("The zoo model started from random weights: this shows the pipeline, not what a pretrained backbone "
              "brings. `segzoo-nnunet demo --pretrained` fine-tunes DINOv3-S's published weights (a download).")
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


class _Steps:
    """Numbered progress lines, ``[segzoo demo 3/7] ...``."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    def __call__(self, text: str) -> None:
        self.done += 1
        print(f"\n[segzoo demo {self.done}/{self.total}] {text}", flush=True)


def _published_weights(config: dict) -> segzoo.PretrainedCfg:
    """The published backbone weights of the demo's pretrained model; unknown names and models
    without published weights are refused here, before any data is written."""
    section = config["model"]
    name = f"{section['name']}.{section['pretrained_tag']}" if section["pretrained_tag"] else section["name"]
    entry = segzoo.model_entry(name)  # UnknownModelError names the closest models
    if not entry.pretrained_cfgs:
        raise ValueError(f"{entry.name} has no published weights to fine-tune; pick a model that has "
                         f"(`segzoo list --pretrained`), e.g. {PRETRAINED_MODEL}")
    cfg = segzoo.get_pretrained_cfg(name)
    return published_weights_source(get_backbone_spec(cfg.backbone), cfg.tag)


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
