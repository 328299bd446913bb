"""``segzoo-nnunet compare``: the cross-validation results of trained configurations side by side.

nnU-Net splits a dataset's training cases into the same five folds for every configuration
(``splits_final.json``) and writes each fold's validation Dice to
``fold_k/validation/summary.json``. :func:`gather` reads those files for zoo configurations
(``nnUNetTrainerSegZoo__nnUNetPlans__2d_segformer_dinov3_large``) and nnU-Net's own
(``nnUNetTrainer__nnUNetPlans__2d``, ``3d_fullres``) alike, together with what each run
cost (epochs and seconds per epoch from the training logs, parameters from a checkpoint).
A fold that is missing, still training, or trained but never validated is named in every
output with the reason; it is left out of the means, never silently.
:mod:`nnunet_bridge.report.compare_report` writes the table (Markdown, CSV), the paired differences
against a reference configuration and the picture (:mod:`nnunet_bridge.report.compare_plot`).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..preflight import refuse_unplanned

__all__ = [
    "DEFAULT_REFERENCE",
    "DEFAULT_TRAINERS",
    "FOREGROUND",
    "CompareError",
    "Comparison",
    "FoldResult",
    "RunResult",
    "gather",
    "caution",
    "paired_differences",
]

FOREGROUND = "foreground mean"
DEFAULT_TRAINERS = ("nnUNetTrainerSegZoo", "nnUNetTrainer")
DEFAULT_REFERENCE = "nnUNetTrainer__nnUNetPlans__2d"  # nnU-Net's own 2d U-Net
# a log written to within this long is taken for a run in progress (nnU-Net logs every epoch)
_RECENT_LOG_SECONDS = 3600
_EPOCH = re.compile(r": Epoch (\d+)\s*$")
_EPOCH_TIME = re.compile(r": Epoch time: ([\d.]+) s")
_NOT_PARAMETERS = ("running_mean", "running_var", "num_batches_tracked")


class CompareError(ValueError):
    """Runs that cannot be compared as asked; the message names them and the fix."""


@dataclass
class FoldResult:
    """One fold of one run: its Dice per class (when validated) or why there is none."""

    fold: int
    status: str  # "ok" | "missing" | "training" | "unvalidated"
    detail: str = ""  # the reason, for anything but "ok"
    dice: dict[str, float] = field(default_factory=dict)  # class name (and FOREGROUND) -> Dice
    epoch_seconds: dict[int, float] = field(default_factory=dict)  # from the training logs
    planned_epochs: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class RunResult:
    """A results folder ``Trainer__Plans__configuration`` and its folds."""

    trainer: str
    plans: str
    configuration: str
    folder: Path
    folds: list[FoldResult]
    parameters: int | None = None

    @property
    def name(self) -> str:
        return f"{self.trainer}__{self.plans}__{self.configuration}"

    @property
    def label(self) -> str:
        """Short name for tables: the zoo configuration, or ``nnUNetTrainer 2d``."""
        label = self.configuration if self.trainer == DEFAULT_TRAINERS[0] else f"{self.trainer} {self.configuration}"
        return label if self.plans == "nnUNetPlans" else f"{label} [{self.plans}]"

    def dice(self, class_name: str) -> dict[int, float]:
        """Dice of ``class_name`` per validated fold."""
        return {f.fold: f.dice[class_name] for f in self.folds if f.ok and class_name in f.dice}

    def epochs_trained(self) -> list[int]:
        return [len(f.epoch_seconds) for f in self.folds if f.epoch_seconds]

    def seconds_per_epoch(self) -> float | None:
        """Median over all logged epochs of all folds (the first epoch's start-up does not skew it)."""
        times = [t for f in self.folds for t in f.epoch_seconds.values()]
        return statistics.median(times) if times else None

    def training_seconds(self) -> float:
        """Logged epoch time summed over all folds."""
        return sum(t for f in self.folds for t in f.epoch_seconds.values())


@dataclass
class Comparison:
    """Everything ``compare`` reports, before formatting."""

    dataset_name: str
    folds: list[int]
    runs: list[RunResult]
    classes: list[str]  # FOREGROUND first, then the dataset's foreground classes
    reference: RunResult | None

    def problems(self) -> list[str]:
        """One line per fold that is not in the numbers, saying why."""
        return [f"{run.label}, fold {f.fold}: {f.detail}" for run in self.runs for f in run.folds if not f.ok]


def gather(
    dataset: str | int,
    configurations: Sequence[str] = (),
    trainers: Sequence[str] = DEFAULT_TRAINERS,
    plans_identifier: str = "nnUNetPlans",
    folds: Sequence[int] = (0, 1, 2, 3, 4),
    reference: str | None = None,
    results_folder: str | Path | None = None,
    trust_checkpoint: bool = False,
) -> Comparison:
    """Read the runs of ``dataset`` under ``$nnUNet_results``.

    ``configurations`` are configuration names (``2d_segformer_dinov3_large``, ``2d``,
    ``3d_fullres``; the run of the first of ``trainers`` that has one is taken) or full
    folder names ``Trainer__Plans__configuration``; none means every run of the dataset.
    ``reference`` (same spelling) defaults to nnU-Net's 2d U-Net when it is among the runs.
    Checkpoints (read for the parameter count) that would run code are refused unless
    ``trust_checkpoint`` (see :mod:`nnunet_bridge.checkpoint_files`).
    """
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    results_folder = results_folder or os.environ.get("nnUNet_results")
    if not results_folder:
        raise FileNotFoundError("nnUNet_results is not set; export it (the folder nnU-Net trained into)")
    root = Path(results_folder)
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as err:  # nnU-Net's "could not find a dataset", said without its traceback
        raise FileNotFoundError(f"no dataset {dataset!r} in nnUNet_raw, nnUNet_preprocessed or nnUNet_results; "
                                "check the id and those environment variables") from err
    dataset_folder = root / dataset_name
    available = sorted(p.name for p in dataset_folder.glob("*__*__*") if p.is_dir())
    if not available:
        raise FileNotFoundError(f"no trained runs of {dataset_name} under {dataset_folder}; train one first")
    _refuse_unplanned(dataset, [c for c in configurations if c.count("__") != 2], dataset_folder, plans_identifier)
    names = [_run_name(c, available, trainers, plans_identifier, dataset) for c in configurations] or available
    if len(set(names)) != len(names):
        raise CompareError(f"a run is named twice: {names}")
    runs = [_read_run(dataset_folder / name, list(folds), dataset_name, trust_checkpoint) for name in names]
    ref = _reference(reference, runs, available, trainers, plans_identifier)
    if ref is not None:  # the reference leads every table
        runs = [ref] + [r for r in runs if r is not ref]
    return Comparison(dataset_name, list(folds), runs, _classes(dataset_folder / names[0]), ref)


def paired_differences(comparison: Comparison, class_name: str = FOREGROUND) -> list[dict]:
    """Per run against the reference: Dice differences on the folds both have, and their signs."""
    if comparison.reference is None:
        return []
    reference = comparison.reference.dice(class_name)
    rows = []
    for run in comparison.runs:
        if run is comparison.reference:
            continue
        own = run.dice(class_name)
        shared = sorted(set(own) & set(reference))
        diffs = {k: own[k] - reference[k] for k in shared}
        rows.append({
            "run": run, "class": class_name, "differences": diffs,
            "mean": statistics.fmean(diffs.values()) if diffs else math.nan,
            "better": sum(d > 0 for d in diffs.values()), "worse": sum(d < 0 for d in diffs.values()),
            "folds": len(diffs),
        })
    return rows


def caution(num_folds: int) -> str:
    """What a fold-wise sign count can and cannot say (no p-values pretending otherwise)."""
    if num_folds < 2:
        return ("One fold gives one number per configuration: there is no spread to judge a difference "
                "against. Train more folds before reading anything into it.")
    chance = 2 * 0.5**num_folds
    return (f"{num_folds} folds are {num_folds} paired numbers, not {num_folds} independent experiments: the "
            "folds share most of their training cases. Even if two configurations were equally good, all "
            f"{num_folds} differences would have the same sign about {chance:.0%} of the time (and more often, "
            "since the folds are correlated), so a sign count is a description, not a test. A difference "
            "smaller than the fold-to-fold spread (the sd in the table) is no evidence either way; a held-out "
            "test set or repeated training says more.")


# -- reading runs ----------------------------------------------------------------------


def _refuse_unplanned(dataset: str | int, configurations: list[str], dataset_folder: Path, plans: str) -> None:
    """Bare configuration names must be in the dataset's plans (the preprocessed plans file, or the
    copies in the results folders when only those are here): a misspelt name is refused with
    the closest planned ones, never compared as a run "still training"."""
    if not configurations:
        return
    path = Path(os.environ.get("nnUNet_preprocessed") or "/nonexistent", dataset_folder.name, f"{plans}.json")
    copies = [path] if path.is_file() else sorted(dataset_folder.glob(f"*__{plans}__*/plans.json"))
    names = sorted({c for copy in copies for c in json.loads(copy.read_text())["configurations"]})
    source = str(path) if path.is_file() else f"{dataset_folder}/*__{plans}__*/plans.json"
    for name in configurations:
        if name not in names:
            try:
                refuse_unplanned(dataset, name, names, source, plans)
            except ValueError as err:
                raise CompareError(str(err)) from err


def _run_name(name: str, available: list[str], trainers: Sequence[str], plans: str, dataset: str | int = "") -> str:
    if name.count("__") == 2:
        if name not in available:
            raise FileNotFoundError(f"no results folder {name!r}; trained runs: {', '.join(available)}")
        return name
    candidates = [a for a in available if a.split("__")[1:] == [plans, name]]
    for trainer in trainers:
        if f"{trainer}__{plans}__{name}" in candidates:
            return f"{trainer}__{plans}__{name}"
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise CompareError(f"{name!r} was trained by several trainers ({', '.join(candidates)}); name the folder "
                         "in full or pick one with --trainer")
    plans_option = "" if plans == "nnUNetPlans" else f" -p {plans}"
    raise CompareError(f"configuration {name!r} has no results folder (plans {plans}, trainers "
                       f"{', '.join(trainers)}): it was never trained; train it with: segzoo-nnunet train "
                       f"{dataset or 'DATASET'} {name} 0{plans_option} (nnU-Net's own configurations: nnUNetv2_train). "
                       f"Trained runs: {', '.join(available)}")


def _reference(reference: str | None, runs: list[RunResult], available: list[str], trainers: Sequence[str],
               plans: str) -> RunResult | None:
    if reference is None:
        return next((r for r in runs if r.name == DEFAULT_REFERENCE), runs[0])
    wanted = _run_name(reference, available, trainers, plans)  # compared runs are checked already
    found = next((r for r in runs if r.name == wanted), None)
    if found is None:
        raise CompareError(f"the reference {reference!r} is not among the compared runs "
                           f"({', '.join(r.name for r in runs)}); add it to the configurations")
    return found


def _read_run(folder: Path, folds: list[int], dataset_name: str, trust_checkpoint: bool = False) -> RunResult:
    trainer, plans, configuration = folder.name.split("__")
    names = _label_names(folder)
    results = [_read_fold(folder, k, names, _validate_command(dataset_name, trainer, plans, configuration, k))
               for k in folds]
    run = RunResult(trainer, plans, configuration, folder, results)
    run.parameters = _parameters(folder, folds, trust_checkpoint)
    return run


def _validate_command(dataset_name: str, trainer: str, plans: str, configuration: str, fold: int) -> str:
    plans_option = "" if plans == "nnUNetPlans" else f" -p {plans}"
    if trainer == DEFAULT_TRAINERS[0]:
        return f"segzoo-nnunet train {dataset_name} {configuration} {fold}{plans_option} --val"
    return f"nnUNetv2_train {dataset_name} {configuration} {fold} -tr {trainer}{plans_option} --val"


def _read_fold(folder: Path, fold: int, names: dict[str, str], validate: str) -> FoldResult:
    fold_dir = folder / f"fold_{fold}"
    if not fold_dir.is_dir():
        return FoldResult(fold, "missing", f"not trained (no {fold_dir.name} folder)")
    seconds, last_log, finished = _read_logs(fold_dir)
    planned = _planned_epochs(fold_dir)
    summary = fold_dir / "validation" / "summary.json"
    progress = f"{len(seconds)} of {planned if planned else '?'} epochs logged"
    if summary.is_file() and not (last_log and not finished and last_log.stat().st_mtime > summary.stat().st_mtime):
        data = json.loads(summary.read_text())
        dice = {FOREGROUND: float(data["foreground_mean"]["Dice"])}
        dice.update({names.get(key, key): float(value["Dice"]) for key, value in data["mean"].items()})
        return FoldResult(fold, "ok", dice=dice, epoch_seconds=seconds, planned_epochs=planned)
    if (fold_dir / "checkpoint_final.pth").is_file() and (finished or last_log is None):
        return FoldResult(fold, "unvalidated", f"trained but not validated (no validation/summary.json); run "
                                               f"`{validate}`",
                          epoch_seconds=seconds, planned_epochs=planned)
    if last_log is not None and time.time() - last_log.stat().st_mtime < _RECENT_LOG_SECONDS:
        minutes = (time.time() - last_log.stat().st_mtime) / 60
        return FoldResult(fold, "training", f"still training ({progress}, last log entry {minutes:.0f} min ago)",
                          epoch_seconds=seconds, planned_epochs=planned)
    return FoldResult(fold, "training", f"unfinished ({progress}, no log entry for an hour: stopped?); continue "
                                        f"it with --c", epoch_seconds=seconds, planned_epochs=planned)


def _read_logs(fold_dir: Path) -> tuple[dict[int, float], Path | None, bool]:
    """Seconds per epoch over every training log of the fold (a later log wins for a repeated
    epoch, as after a resume), the newest log, and whether it ends a finished run."""
    logs = sorted(fold_dir.glob("training_log_*.txt"))  # their names are timestamps
    seconds: dict[int, float] = {}
    text = ""
    for log in logs:
        text = log.read_text(errors="replace")
        epoch = None
        for line in text.splitlines():
            if match := _EPOCH.search(line):
                epoch = int(match.group(1))
            elif epoch is not None and (match := _EPOCH_TIME.search(line)):
                seconds[epoch] = float(match.group(1))
    finished = "Training done." in text or "Validation complete" in text
    return seconds, (logs[-1] if logs else None), finished


def _planned_epochs(fold_dir: Path) -> int | None:
    debug = fold_dir / "debug.json"  # nnU-Net's dump of the trainer's attributes
    try:
        return int(json.loads(debug.read_text())["num_epochs"])
    except (OSError, KeyError, ValueError):
        return None


def _parameters(folder: Path, folds: list[int], trust_checkpoint: bool = False) -> int | None:
    """Parameter count of the network in the first checkpoint found (weights, not buffers)."""
    from ..checkpoint_files import load_checkpoint_file  # torch: not for `segzoo-nnunet --help`

    for fold in folds:
        for name in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"):
            path = folder / f"fold_{fold}" / name
            if path.is_file():
                weights = load_checkpoint_file(path, trusted=trust_checkpoint, mmap=True)["network_weights"]
                # a tensor under two names is one parameter: nnU-Net's U-Net decoder keeps a reference to its
                # encoder, so every encoder weight is in the state dict twice (saving keeps the sharing)
                unique = {(v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)): v.numel()
                          for k, v in weights.items() if v.is_floating_point() and not k.endswith(_NOT_PARAMETERS)}
                return sum(unique.values())
    return None


def _label_names(folder: Path) -> dict[str, str]:
    """summary.json keys ('1', or '(1, 2)' for regions) -> label names from dataset.json."""
    path = folder / "dataset.json"
    if not path.is_file():
        return {}
    labels = json.loads(path.read_text()).get("labels", {})
    names = {}
    for name, value in labels.items():
        if isinstance(value, list):  # a region: nnU-Net keys it by its tuple of labels, or the label alone
            value = tuple(value) if len(value) > 1 else value[0]
        names[str(value)] = name
    return names


def _classes(folder: Path) -> list[str]:
    path = folder / "dataset.json"
    labels = json.loads(path.read_text()).get("labels", {}) if path.is_file() else {}
    return [FOREGROUND] + [name for name, value in labels.items() if value not in (0, [0]) and name != "ignore"]


# -- table pieces ----------------------------------------------------------------------


