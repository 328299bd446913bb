"""Checks every ``segzoo-nnunet`` command makes before it writes or loads anything.

A misspelt configuration, dataset, fold or trainer must stop a command at once with the
fix, not plan a default model, create a results folder, or surface as nnU-Net's
traceback hours later. Each check raises :class:`PreflightError` with one line that names
the problem and the command that fixes it. Only ``segzoo-nnunet plan`` adds configurations.
"""

from __future__ import annotations

import difflib
import json
import os
import zipfile
from pathlib import Path
from typing import Sequence

__all__ = [
    "PreflightError",
    "dataset_name",
    "planned_configurations",
    "require_planned",
    "refuse_unplanned",
    "parse_fold",
    "require_trained_folds",
]


class PreflightError(ValueError):
    """Bad input to a command; the message names the problem and the fix."""


def dataset_name(dataset: str | int) -> str:
    """``DatasetXXX_Name`` for an id or name; nnU-Net's RuntimeError said as one line with the fix."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset)
    except RuntimeError as err:  # nnU-Net: "Could not find a dataset with the ID ..." or an unset folder variable
        folders = {key: os.environ.get(key) or "<not set>" for key in
                   ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
        raise PreflightError(f"no dataset {dataset!r} in {', '.join(f'{k}={v}' for k, v in folders.items())}; "
                             "check the dataset id and those environment variables") from err


def planned_configurations(dataset: str | int, plans_identifier: str = "nnUNetPlans") -> tuple[list[str], str]:
    """The configuration names the dataset's plans hold, and where they were read.

    The plans under ``$nnUNet_preprocessed`` are the source; a machine that only has
    ``$nnUNet_results`` (predicting elsewhere) uses the ``plans.json`` copies nnU-Net put
    in each results folder of that plans identifier.
    """
    name = dataset_name(dataset)
    preprocessed = os.environ.get("nnUNet_preprocessed")
    if preprocessed:
        path = Path(preprocessed) / name / f"{plans_identifier}.json"
        if path.is_file():
            return sorted(json.loads(path.read_text())["configurations"]), str(path)
    results = os.environ.get("nnUNet_results")
    copies = sorted(Path(results, name).glob(f"*__{plans_identifier}__*/plans.json")) if results else []
    if not copies:
        raise PreflightError(f"no nnU-Net plans {plans_identifier!r} for {name}; run "
                             f"`nnUNetv2_plan_and_preprocess -d {dataset} -c 2d` first")
    names = {c for copy in copies for c in json.loads(copy.read_text())["configurations"]}
    return sorted(names), f"{results}/{name}/*__{plans_identifier}__*/plans.json"


def require_planned(dataset: str | int, configuration: str, plans_identifier: str = "nnUNetPlans") -> str:
    """Refuse ``configuration`` unless the plans hold it; returns the dataset name.

    The refusal lists the closest planned names and the ``plan`` command that would add it.
    """
    names, source = planned_configurations(dataset, plans_identifier)
    if configuration not in names:
        refuse_unplanned(dataset, configuration, names, source, plans_identifier)
    return dataset_name(dataset)


def refuse_unplanned(dataset: str | int, configuration: str, names: Sequence[str], source: str,
                     plans_identifier: str = "nnUNetPlans") -> None:
    """Raise the refusal for a configuration missing from ``names`` (read from ``source``)."""
    close = difflib.get_close_matches(configuration, names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else f"planned: {', '.join(names) or 'none'}. "
    raise PreflightError(f"configuration {configuration!r} is not in the plans ({source}); {hint}"
                         f"Only `segzoo-nnunet plan` adds configurations: {_plan_command(dataset, configuration, plans_identifier)}")


def parse_fold(fold: str | int) -> int | str:
    """A fold as nnU-Net takes it: ``all`` or a non-negative integer."""
    if str(fold) == "all":
        return "all"
    try:
        value = int(fold)
    except ValueError:
        value = -1
    if value < 0:
        raise PreflightError(f"fold {fold!r} is not a fold: give 0-4 (nnU-Net's five-fold split) or 'all'")
    return value


def require_trained_folds(dataset: str | int, configuration: str, folds: Sequence[str | int], trainer: str,
                          plans_identifier: str = "nnUNetPlans", checkpoint: str = "checkpoint_final.pth") -> None:
    """Refuse folds without ``checkpoint`` or with one that is cut short (an interrupted copy)."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    name = dataset_name(dataset)
    plans_option = "" if plans_identifier == "nnUNetPlans" else f" -p {plans_identifier}"
    trainer_option = "" if trainer == "nnUNetTrainerSegZoo" else f" -tr {trainer}"
    for fold in (parse_fold(f) for f in folds):
        folder = Path(get_output_folder(name, trainer, plans_identifier, configuration, fold))
        path = folder / checkpoint
        train = f"segzoo-nnunet train {dataset} {configuration} {fold}{trainer_option}{plans_option}"
        if not path.is_file():
            what = "is not trained" if checkpoint == "checkpoint_final.pth" else f"has no {checkpoint}"
            raise PreflightError(f"fold {fold} of {configuration} ({trainer}) {what}: no {path}; train it with: {train}")
        try:  # torch checkpoints are zip files; a cut-short one has no central directory at its end
            with zipfile.ZipFile(path):
                pass
        except (zipfile.BadZipFile, OSError) as err:
            raise PreflightError(f"checkpoint {path} is damaged ({err}: truncated or not a PyTorch file); copy it "
                                 f"again, or train the fold again with: {train}") from err


def _plan_command(dataset: str | int, configuration: str, plans_identifier: str) -> str:
    """``segzoo-nnunet plan`` for ``2d_<registered model>``, else with a YAML and the name."""
    import segzoo

    plans_option = "" if plans_identifier == "nnUNetPlans" else f" -p {plans_identifier}"
    model = configuration[3:] if configuration.startswith("2d_") else ""
    if model and segzoo.is_model(model):
        return f"segzoo-nnunet plan {dataset} --model {model}{plans_option}"
    return f"segzoo-nnunet plan {dataset} --config YOUR.yaml --name {configuration}{plans_option}"
