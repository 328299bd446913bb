"""The picture of ``segzoo-nnunet compare``: Dice per fold, Dice per class, and one case.

Top left, every configuration's foreground-mean Dice on each fold, a fold's points joined
across configurations (the comparison is paired); top right, Dice per class as bars (mean
over folds, sd as whiskers); below, one validation case: image, truth and each
configuration's prediction, read from the folds' ``validation/`` outputs (the slice with the
most foreground for volumes), each label value in one colour, which a legend names with the
dataset's label names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name
from nnunetv2.paths import nnUNet_preprocessed

from .compare import FOREGROUND, CompareError, Comparison, RunResult

__all__ = ["comparison_figure", "write_comparison_figure", "validation_case"]


def write_comparison_figure(comparison: Comparison, path: str | Path, case: str | None = None) -> Path:
    """Draw the figure to ``path`` (PNG) and return the path."""
    matplotlib.use("Agg")  # files only; no display needed
    with plt.style.context("default"):
        figure = comparison_figure(comparison, case)
        figure.savefig(path, dpi=110)
        plt.close(figure)
    return Path(path)


def comparison_figure(comparison: Comparison, case: str | None = None) -> Figure:
    """The figure :func:`write_comparison_figure` saves (close it with ``plt.close`` when done)."""
    picked = validation_case(comparison, case)
    columns = 2 + len(comparison.runs)
    # matplotlib's defaults, whatever style the process set (nnU-Net's progress plot sets seaborn's)
    with plt.style.context("default"):
        figure = plt.figure(figsize=(max(10.0, 2.2 * columns), 8.5 if picked else 4.5), layout="constrained")
        rows = figure.subfigures(2 if picked else 1, 1, height_ratios=[1.1, 1] if picked else None)
        top = rows[0] if picked else rows
        left, right = top.subplots(1, 2, width_ratios=[1, 1.3])
        _per_fold(left, comparison)
        _per_class(right, comparison)
        if picked:
            _case_row(rows[1], comparison, *picked)
    return figure


def validation_case(comparison: Comparison, case: str | None = None) -> tuple[int, str] | None:
    """(fold, case) predicted by every run: ``case`` if given, else the first case of the first
    fold that all runs validated. None when no fold has been validated by every run."""
    for fold in comparison.folds:
        folders = [run.folder / f"fold_{fold}" / "validation" for run in comparison.runs]
        if not all(_fold_ok(run, fold) for run in comparison.runs):
            continue
        cases = set.intersection(*(set(_predicted_cases(f, run)) for f, run in zip(folders, comparison.runs)))
        if case is not None and case in cases:
            return fold, case
        if case is None and cases:
            return fold, sorted(cases)[0]
    if case is not None:
        raise CompareError(f"case {case!r} is not in a validation fold that every compared run has predicted")
    return None


# -- panels ----------------------------------------------------------------------------


def _per_fold(ax, comparison: Comparison) -> None:
    labels = [run.label for run in comparison.runs]
    positions = np.arange(len(labels))
    for fold in comparison.folds:
        values = [run.dice(FOREGROUND).get(fold, np.nan) for run in comparison.runs]
        ax.plot(positions, values, "o-", alpha=0.75, label=f"fold {fold}")
    means = [np.mean(list(run.dice(FOREGROUND).values()) or [np.nan]) for run in comparison.runs]
    ax.scatter(positions, means, marker="_", s=900, color="black", zorder=3, label="mean")
    ax.set_xticks(positions, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("foreground-mean Dice")
    ax.set_title("Dice per fold (validation cases)")
    ax.legend(fontsize=7, ncols=2)
    ax.grid(axis="y", alpha=0.3)


def _per_class(ax, comparison: Comparison) -> None:
    classes = comparison.classes[1:] + comparison.classes[:1]  # the foreground mean last
    width = 0.8 / max(len(comparison.runs), 1)
    for i, run in enumerate(comparison.runs):
        means, sds = [], []
        for class_name in classes:
            values = list(run.dice(class_name).values())
            means.append(np.mean(values) if values else np.nan)
            sds.append(np.std(values, ddof=1) if len(values) > 1 else 0.0)
        x = np.arange(len(classes)) + (i - (len(comparison.runs) - 1) / 2) * width
        ax.bar(x, means, width, yerr=sds, capsize=3, label=run.label)
    ax.set_xticks(np.arange(len(classes)), classes, fontsize=8)
    ax.set_ylabel("Dice (mean ± sd over folds)")
    ax.set_ylim(0, 1)
    ax.set_title("Dice per class")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def _case_row(subfigure, comparison: Comparison, fold: int, case: str) -> None:
    run0 = comparison.runs[0]
    reader = _reader(run0)
    ending = _dataset_json(run0)["file_ending"]
    truth = reader.read_seg(str(_reference_file(run0, fold, case, ending)))[0][0]
    image = _raw_image(comparison, run0, reader, case, ending)
    index = int(np.argmax((truth > 0).reshape(truth.shape[0], -1).sum(1)))  # the slice with most foreground
    panels = [("image", image[index] if image is not None else None, "image"), ("truth", truth[index], "label")]
    for run in comparison.runs:
        prediction = reader.read_seg(str(run.folder / f"fold_{fold}" / "validation" / f"{case}{ending}"))[0][0]
        panels.append((f"{run.label}\n{_case_dice(run, fold, case)}", prediction[index], "label"))
    axes = subfigure.subplots(1, len(panels))
    names = _label_names(run0, max(int(truth.max()), 1))
    colours = _label_colours(max(names))
    for ax, (title, data, kind) in zip(axes, panels):
        ax.set_axis_off()
        ax.set_title(title, fontsize=8)
        if data is None:
            ax.text(0.5, 0.5, "image not found\nunder nnUNet_raw", ha="center", va="center", fontsize=8)
        elif kind == "image":
            ax.imshow(_display(data), cmap="gray", interpolation="nearest")
        else:
            ax.imshow(colours[np.clip(data, 0, len(colours) - 1).astype(int)], interpolation="nearest")
    where = f", slice {index}" if truth.shape[0] > 1 else ""
    subfigure.suptitle(f"validation case {case} (fold {fold}{where})", fontsize=9)
    # what each colour of the truth and prediction panels means
    handles = [Patch(facecolor=colours[value], edgecolor="0.5", label=f"{value}: {name}")
               for value, name in sorted(names.items())]
    subfigure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8), fontsize=8,
                     title="label colours (truth and predictions)", title_fontsize=8, frameon=False)


# -- reading ---------------------------------------------------------------------------


def _fold_ok(run: RunResult, fold: int) -> bool:
    return any(f.fold == fold and f.ok for f in run.folds)


def _predicted_cases(folder: Path, run: RunResult) -> list[str]:
    ending = _dataset_json(run)["file_ending"]
    return [p.name[: -len(ending)] for p in folder.glob(f"*{ending}")]


def _dataset_json(run: RunResult) -> dict:
    return json.loads((run.folder / "dataset.json").read_text())


def _reader(run: RunResult):
    plans = json.loads((run.folder / "plans.json").read_text())
    return recursive_find_reader_writer_by_name(plans["image_reader_writer"])()


def _summary_case(run: RunResult, fold: int, case: str) -> dict | None:
    summary = json.loads((run.folder / f"fold_{fold}" / "validation" / "summary.json").read_text())
    return next((c for c in summary["metric_per_case"] if Path(c["prediction_file"]).name.startswith(case + ".")), None)


def _reference_file(run: RunResult, fold: int, case: str, ending: str) -> Path:
    """The truth nnU-Net scored the case against (its gt_segmentations copy)."""
    entry = _summary_case(run, fold, case)
    if entry is not None and Path(entry["reference_file"]).is_file():
        return Path(entry["reference_file"])
    return Path(str(nnUNet_preprocessed)) / run.folder.parent.name / "gt_segmentations" / f"{case}{ending}"


def _case_dice(run: RunResult, fold: int, case: str) -> str:
    entry = _summary_case(run, fold, case)
    if entry is None:
        return ""
    values = [m["Dice"] for m in entry["metrics"].values() if m.get("Dice") is not None and not np.isnan(m["Dice"])]
    return f"Dice {np.mean(values):.3f}" if values else ""


def _raw_image(comparison: Comparison, run: RunResult, reader, case: str, ending: str) -> np.ndarray | None:
    """The raw image from nnUNet_raw: (z, y, x), or (z, y, x, 3) for three channels (RGB)."""
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        return None
    # one file per channel (_0000, _0001, ...), except natural images: one RGB PNG holds all three
    files = sorted((Path(raw) / comparison.dataset_name / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}"))
    if not files:
        return None
    data = reader.read_images([str(f) for f in files])[0]
    return np.moveaxis(data, 0, -1) if data.shape[0] == 3 else data[0]


def _label_names(run: RunResult, highest: int) -> dict[int, str]:
    """Label value -> name from the dataset's ``labels`` (``ignore`` marked as not scored); values up
    to ``highest`` that it does not name (or names as regions) get ``label N``."""
    names = {value: ("ignore (not scored)" if name == "ignore" else name)
             for name, value in _dataset_json(run).get("labels", {}).items() if isinstance(value, int)}
    return {value: names.get(value, f"label {value}") for value in range(max([highest, *names]) + 1)}


def _label_colours(num_classes: int) -> np.ndarray:
    """RGB per label value: black background, then matplotlib's tab10 colours."""
    tab10 = colormaps["tab10"].colors
    return np.array([(0.0, 0.0, 0.0)] + [tab10[i % 10] for i in range(num_classes)])


def _display(image: np.ndarray) -> np.ndarray:
    """Grey values between the 1st and 99th percentile (a window that suits CT, MR and photos)."""
    low, high = np.percentile(image, [1, 99])
    return np.clip((image - low) / max(high - low, 1e-6), 0, 1)
