"""The medical page's worked example: synthetic CT, 2.5D, a zoo model against nnU-Net's 2d U-Net.

In its own nnU-Net folders under ``--out`` (the user's are not touched): writes the synthetic
CT volumes (liver and kidneys, 4 mm slices against 0.8 mm in plane), stacks each slice with
its neighbours as three channels (``stack_slices(neighbours=1)``), runs nnU-Net's
fingerprint, plans and 2d preprocessing, adds a zoo configuration with the demo's small
from-scratch SegFormer (4 ViT blocks of width 96 on 8-pixel patches), trains fold 0 of it
and of nnU-Net's own 2d U-Net for the same epochs and iterations, predicts the test volumes
with nnU-Net's predictor and writes the ``segzoo-nnunet compare`` report of fold 0.

Both networks start from random weights and train for minutes on easy synthetic data: the
run shows the mechanics end to end, not which network is better on real CT.

    python benchmarks/bench_nnunet_ct25d.py --out /tmp/ct25d          # 2 CPU cores: a few minutes
    python benchmarks/bench_nnunet_ct25d.py --out /tmp/ct25d --epochs 1 --iterations 2   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from benchmarks.results_file import append_results  # noqa: E402

SOURCE_ID, SOURCE_NAME = 980, "SyntheticCT"
STACKED_ID, STACKED_NAME = 982, "SyntheticCT25D"
ZOO_TRAINER = "nnUNetTrainerSegZoo"
FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the nnU-Net folders and the report")
    parser.add_argument("--train-cases", type=int, default=12)
    parser.add_argument("--test-cases", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(16, 80, 80), metavar=("Z", "Y", "X"),
                        help="voxels per volume (4 mm slices, 0.8 mm in plane)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also append the result to this file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = args.out.resolve()
    _nnunet_environment(out)
    stage = _Stages(8)

    # nnU-Net reads its folders and nnUNet_def_n_proc when first imported: only after the lines above
    import torch
    import yaml
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.run.run_training import run_training

    from nnunet_bridge import ensure_ext_trainer_path
    from nnunet_bridge.config import load_config
    from nnunet_bridge.demo.baseline import train_nnunet_baseline
    from nnunet_bridge.demo.pipeline import VAL_ITERATIONS, demo_config
    from nnunet_bridge.demo.synthetic_volumes import VOLUME_LABELS, write_ct_dataset
    from nnunet_bridge.plans import plan
    from nnunet_bridge.report.compare import gather
    from nnunet_bridge.report.compare_report import format_text, write_report
    from nnunet_bridge.slices import stack_slices
    from nnunet_bridge.trainer_lookup import bridge_trainers_resolved

    raw = out / "nnUNet_raw"
    stage(f"writing {args.train_cases} + {args.test_cases} synthetic CT volumes {tuple(args.shape)} to {raw}")
    source = write_ct_dataset(raw, SOURCE_ID, SOURCE_NAME, num_train=args.train_cases, num_test=args.test_cases,
                              shape=tuple(args.shape), seed=args.seed)

    stage("stacking every slice with its neighbours (2.5D: 3 channels)")
    stacked = stack_slices(source, f"Dataset{STACKED_ID}_{STACKED_NAME}", neighbours=1)

    stage("nnU-Net fingerprint, plans and 2d preprocessing")
    workers = int(os.environ["nnUNet_def_n_proc"])
    extract_fingerprints([STACKED_ID], num_processes=workers, check_dataset_integrity=True)
    plan_experiments([STACKED_ID])
    preprocess([STACKED_ID], configurations=("2d",), num_processes=(workers,))

    stage("adding the zoo configuration (the demo's small SegFormer, random init) to the plans")
    config_file = out / "ct25d_config.yaml"
    config_file.write_text(yaml.safe_dump(demo_config(args.epochs, args.iterations), sort_keys=False))
    configuration = plan(STACKED_ID, load_config(config_file))

    ensure_ext_trainer_path()
    os.environ["nnUNet_n_proc_DA"] = "0"  # augment in-process: worker processes only compete for the cores
    device = torch.device(args.device)
    seconds = {}
    with bridge_trainers_resolved():
        stage(f"training {configuration} fold 0 for {args.epochs} epochs x {args.iterations} iterations")
        begin = time.perf_counter()
        run_training(str(STACKED_ID), configuration, 0, ZOO_TRAINER, device=device)
        seconds[configuration] = time.perf_counter() - begin

        stage(f"training nnU-Net's 2d U-Net fold 0 for the same {args.epochs} epochs x {args.iterations} iterations")
        begin = time.perf_counter()
        train_nnunet_baseline(STACKED_ID, 0, args.epochs, args.iterations, VAL_ITERATIONS, device=device)
        seconds["2d"] = time.perf_counter() - begin

    stage(f"predicting the {args.test_cases} test volumes with both (nnU-Net's predictor)")
    labels = {name: value for name, value in VOLUME_LABELS.items() if value}
    test_dice = {}
    for trainer, name in ((ZOO_TRAINER, configuration), ("nnUNetTrainer", "2d")):
        predictions = out / f"predictions_{name}"
        _predict(trainer, name, stacked.folder / "imagesTs", predictions, device)
        test_dice[name] = dice_per_class(stacked.folder / "labelsTs", predictions, labels)

    stage("comparing fold 0's validation cases (segzoo-nnunet compare)")
    comparison = gather(STACKED_ID, [configuration, "2d"], folds=[0])
    print(format_text(comparison))
    report = write_report(comparison, out / "comparison")

    runs = {run.configuration: run for run in comparison.runs}
    result = {"train_cases": args.train_cases, "test_cases": args.test_cases, "shape": list(args.shape),
              "epochs": args.epochs, "iterations": args.iterations, "threads": torch.get_num_threads(),
              "device": args.device, "runs": {}}
    for name in (configuration, "2d"):
        run = runs[name]
        result["runs"][name] = {
            "validation_dice": {c: round(run.dice(c)[0], 3) for c in labels if 0 in run.dice(c)},
            "test_dice": {c: round(v, 3) for c, v in test_dice[name].items()},
            "seconds_per_epoch": round(run.seconds_per_epoch() or float("nan"), 1),
            "training_seconds": round(seconds[name]),
            "parameters": run.parameters}
    result["total_seconds"] = round(time.perf_counter() - start)
    splits = Path(os.environ["nnUNet_preprocessed"]) / stacked.folder.name / "splits_final.json"
    result["validation_cases"] = len(json.loads(splits.read_text())[0]["val"])
    _print_summary(result, report)
    print(json.dumps(result), flush=True)
    append_results(args.json, result)
    return result


def dice_per_class(truth_folder: Path, prediction_folder: Path, labels: dict[str, int]) -> dict[str, float]:
    """Dice per class, per volume, then the mean over volumes (as nnU-Net's summary.json; a volume
    where the class is in neither truth nor prediction is left out)."""
    import SimpleITK as sitk

    per_case = {name: [] for name in labels}
    for truth_file in sorted(truth_folder.glob("*.nii.gz")):
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(truth_file)))
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction_folder / truth_file.name)))
        for name, value in labels.items():
            t, p = truth == value, pred == value
            if t.any() or p.any():
                per_case[name].append(2 * float((t & p).sum()) / float(t.sum() + p.sum()))
    return {name: float(np.mean(v)) if v else float("nan") for name, v in per_case.items()}


# -- helpers ---------------------------------------------------------------------------


class _Stages:
    """Numbered progress lines with the time since the start."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def __call__(self, text: str) -> None:
        self.done += 1
        print(f"\n[ct25d {self.done}/{self.total}, {time.perf_counter() - self.start:.0f} s] {text}", flush=True)


def _nnunet_environment(out: Path) -> None:
    """Fresh nnU-Net folders under ``out`` (a new dataset makes the last run's data and models stale)."""
    for key in FOLDERS:
        folder = out / key
        for name in (f"Dataset{SOURCE_ID}_{SOURCE_NAME}", f"Dataset{STACKED_ID}_{STACKED_NAME}"):
            shutil.rmtree(folder / name, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[key] = str(folder)
    os.environ.setdefault("nnUNet_def_n_proc", str(max(1, min(2, os.cpu_count() or 1))))
    os.environ["nnUNet_n_proc_DA"] = os.environ["nnUNet_def_n_proc"]  # nnU-Net's planner needs >= 1


def _predict(trainer: str, configuration: str, images: Path, output: Path, device) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from nnunet_bridge.trainer_lookup import bridge_trainers_resolved

    predictor = nnUNetPredictor(device=device, perform_everything_on_device=device.type == "cuda",
                                allow_tqdm=False, verbose=False)
    with bridge_trainers_resolved():  # nnU-Net looks the trainer up by name in here
        predictor.initialize_from_trained_model_folder(
            get_output_folder(STACKED_ID, trainer, "nnUNetPlans", configuration),
            use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)  # the sequential path does not create it
    # in this process: worker processes would only compete for the cores (what -npp 0 -nps 0 does)
    predictor.predict_from_files_sequential(str(images), str(output), save_probabilities=False, overwrite=True)


def _print_summary(result: dict, report: dict) -> None:
    names = list(result["runs"])
    classes = list(result["runs"][names[0]]["test_dice"])
    print(f"\nDice per class on fold 0's {result['validation_cases']} validation volumes (val) and the "
          f"{result['test_cases']} test volumes (test):")
    print(f"  {'':<28}" + "".join(f"{c + ' val':>14}{c + ' test':>14}" for c in classes) + f"{'s/epoch':>10}")
    for name in names:
        run = result["runs"][name]
        cells = "".join(f"{run['validation_dice'].get(c, float('nan')):>14.3f}{run['test_dice'][c]:>14.3f}"
                        for c in classes)
        print(f"  {name:<28}{cells}{run['seconds_per_epoch']:>10.1f}")
    print(f"\nComparison report: {report['markdown']} (picture: {report['figure']})")
    print(f"Total time: {result['total_seconds']} s")


if __name__ == "__main__":
    main()
