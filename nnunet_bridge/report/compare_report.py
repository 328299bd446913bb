"""The comparison of :mod:`nnunet_bridge.report.compare` as text, Markdown and CSV, and the report folder.

:func:`write_report` writes ``comparison.md``, ``comparison.csv``, ``paired_differences.csv``
and the picture (:mod:`nnunet_bridge.report.compare_plot`); :func:`format_text` is what
``segzoo-nnunet compare`` prints.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from .compare import Comparison, caution, paired_differences

__all__ = ["format_markdown", "format_text", "write_report"]


def format_text(comparison: Comparison) -> str:
    """The table as printed: one block per class, best value per column marked with '*'."""
    lines = [f"{comparison.dataset_name}: validation Dice per fold (nnU-Net's summary.json), mean ± sd over folds",
             "* = best in its column"]
    width = max(len(r.label) for r in comparison.runs) + 2
    for class_name in comparison.classes:
        header, rows = _table(comparison, class_name, mark=lambda s: s + "*", plain=lambda s: s + " ")
        lines += ["", class_name.ljust(width) + "".join(h.rjust(9) for h in header[1:-1]) + "  " + header[-1]]
        for row in rows:
            lines.append(row[0].ljust(width) + "".join(c.rjust(9) for c in row[1:-1]) + "  " + row[-1])
    lines += _paired_text(comparison) + _cost_text(comparison) + _problems_text(comparison)
    return "\n".join(lines)


def format_markdown(comparison: Comparison, figure: str | None = None) -> str:
    """The report as Markdown; the best value per column in bold."""
    out = [f"# {comparison.dataset_name}: cross-validation comparison", "",
           "Dice on each fold's validation cases, as nnU-Net's `validation/summary.json` has it; "
           "mean ± sd over the validated folds. Bold: best in its column.", ""]
    if figure:
        out += [f"![comparison]({figure})", ""]
    for class_name in comparison.classes:
        header, rows = _table(comparison, class_name, mark=lambda s: f"**{s}**", plain=lambda s: s)
        out += [f"## {class_name}", "", _md_row(header), _md_row(["---"] * len(header))]
        out += [_md_row(row) for row in rows] + [""]
    differences = paired_differences(comparison)
    if differences:
        folds = [str(k) for k in comparison.folds]
        out += [f"## Paired differences against {comparison.reference.label}", "",
                "Foreground-mean Dice of each configuration minus the reference's, fold by fold.", "",
                _md_row(["configuration", *[f"fold {k}" for k in folds], "mean", "better / worse"]),
                _md_row(["---"] * (len(folds) + 3))]
        for row in differences:
            cells = [_signed(row["differences"].get(int(k))) for k in folds]
            out.append(_md_row([row["run"].label, *cells, _signed(row["mean"]),
                                f"{row['better']} / {row['worse']} of {row['folds']}"]))
        out += ["", caution(max(r["folds"] for r in differences)), ""]
    out += ["## Training cost", "", _md_row(["configuration", "epochs", "s / epoch", "time (all folds)", "parameters"]),
            _md_row(["---"] * 5)]
    out += [_md_row(cells) for cells in _cost_rows(comparison)] + [""]
    problems = comparison.problems()
    out += ["## Not in the numbers", ""] + ([f"- {p}" for p in problems] or ["Every requested fold is validated."])
    return "\n".join(out) + "\n"


def write_report(comparison: Comparison, out_dir: str | Path, figure: bool = True,
                 case: str | None = None) -> dict[str, Path]:
    """Write ``comparison.md``, ``comparison.csv``, ``paired_differences.csv`` and ``comparison.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "comparison.csv", "paired_csv": out / "paired_differences.csv",
             "markdown": out / "comparison.md"}
    _write_csv(comparison, paths["csv"])
    _write_paired_csv(comparison, paths["paired_csv"])
    if figure:
        from .compare_plot import write_comparison_figure  # matplotlib and nnU-Net's readers: only to draw

        paths["figure"] = write_comparison_figure(comparison, out / "comparison.png", case=case)
    paths["markdown"].write_text(format_markdown(comparison, "comparison.png" if figure else None))
    return paths


def _table(comparison: Comparison, class_name: str, mark, plain) -> tuple[list[str], list[list[str]]]:
    folds = comparison.folds
    header = ["configuration", *[f"fold {k}" for k in folds], "mean ± sd"]
    columns = {k: {r.name: r.dice(class_name).get(k) for r in comparison.runs} for k in folds}
    means = {r.name: _mean_sd(r.dice(class_name).values()) for r in comparison.runs}
    best = {k: _best(v) for k, v in columns.items()}
    best_mean = _best({n: m[0] for n, m in means.items()})
    rows = []
    for run in comparison.runs:
        cells = [run.label]
        for k in folds:
            value = columns[k][run.name]
            status = next(f.status for f in run.folds if f.fold == k)
            text = f"{value:.3f}" if value is not None else ("-" if status == "ok" else status)
            cells.append(mark(text) if value is not None and value == best[k] else plain(text))
        mean, sd, n = means[run.name]
        text = "-" if n == 0 else (f"{mean:.3f}" + (f" ± {sd:.3f}" if n > 1 else "")
                                   + (f" (n={n})" if n < len(folds) else ""))
        cells.append(mark(text) if n and mean == best_mean else text)
        rows.append(cells)
    return header, rows


def _mean_sd(values) -> tuple[float, float, int]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan, 0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan), len(values)


def _best(values: dict[str, float | None]) -> float | None:
    present = [v for v in values.values() if v is not None and not math.isnan(v)]
    return max(present) if len(present) > 1 else None  # one value is best of nothing


def _signed(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:+.3f}"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _paired_text(comparison: Comparison) -> list[str]:
    differences = paired_differences(comparison)
    if not differences:
        return []
    lines = ["", f"Paired differences in foreground-mean Dice against {comparison.reference.label}:"]
    for row in differences:
        per_fold = "  ".join(f"fold {k} {d:+.3f}" for k, d in row["differences"].items())
        lines.append(f"  {row['run'].label}: mean {_signed(row['mean'])}; better in {row['better']} and worse in "
                     f"{row['worse']} of {row['folds']} folds ({per_fold})")
    lines.append("  " + caution(max(r["folds"] for r in differences)))
    return lines


def _cost_rows(comparison: Comparison) -> list[list[str]]:
    rows = []
    for run in comparison.runs:
        epochs = run.epochs_trained()
        epochs_text = "-" if not epochs else (str(epochs[0]) if len(set(epochs)) == 1 else f"{min(epochs)}-{max(epochs)}")
        per_epoch = run.seconds_per_epoch()
        rows.append([run.label, epochs_text, "-" if per_epoch is None else f"{per_epoch:.1f}",
                     _duration(run.training_seconds()),
                     "-" if run.parameters is None else f"{run.parameters / 1e6:.2f} M"])
    return rows


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _cost_text(comparison: Comparison) -> list[str]:
    lines = ["", "Training cost (from the training logs; parameters from a checkpoint):"]
    for label, epochs, per_epoch, hours, params in _cost_rows(comparison):
        lines.append(f"  {label}: {epochs} epochs per fold, {per_epoch} s per epoch, {hours} over all folds, "
                     f"{params} parameters")
    return lines


def _problems_text(comparison: Comparison) -> list[str]:
    problems = comparison.problems()
    return ["", "Not in the numbers:"] + [f"  {p}" for p in problems] if problems else []


def _write_csv(comparison: Comparison, path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "trainer", "plans", "configuration", "class",
                         *[f"fold_{k}" for k in comparison.folds], "mean", "sd", "folds_validated"])
        for class_name in comparison.classes:
            for run in comparison.runs:
                dice = run.dice(class_name)
                mean, sd, n = _mean_sd(dice.values())
                cells = [_csv_number(dice.get(k)) for k in comparison.folds]
                writer.writerow([run.name, run.trainer, run.plans, run.configuration, class_name, *cells,
                                 _csv_number(mean), _csv_number(sd), n])


def _write_paired_csv(comparison: Comparison, path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "reference", "class", *[f"fold_{k}" for k in comparison.folds], "mean",
                         "better", "worse", "folds"])
        for class_name in comparison.classes:
            for row in paired_differences(comparison, class_name):
                cells = [_csv_number(row["differences"].get(k)) for k in comparison.folds]
                writer.writerow([row["run"].name, comparison.reference.name, class_name, *cells,
                                 _csv_number(row["mean"]), row["better"], row["worse"], row["folds"]])


def _csv_number(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else repr(float(value))
