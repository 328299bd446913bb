"""Input images with NaN or Inf are named before prediction.

nnU-Net predicts them without a word: its normalisation (the image's mean and standard
deviation for z-scoring) turns one non-finite pixel into a NaN image, and the prediction
comes out as a silent, meaningless segmentation.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from .preflight import PreflightError

__all__ = ["NonFiniteInputError", "check_inputs_finite", "nonfinite_cases"]


class NonFiniteInputError(PreflightError):
    """Input cases hold NaN or Inf values; the message names them and the fix."""


def nonfinite_cases(input_folder: str | os.PathLike, file_ending: str, reader: Any) -> dict[str, str]:
    """Case identifier -> what is wrong (``"3 NaN in case_0000.nii.gz"``) for every case in
    ``input_folder`` (nnU-Net's ``CASE_XXXX<file_ending>`` layout) with a non-finite value,
    read with the dataset's own reader (a nnU-Net ``BaseReaderWriter``)."""
    pattern = re.compile(rf"^(.+)_\d{{4}}{re.escape(file_ending)}$")
    cases: dict[str, list[Path]] = {}
    for path in sorted(Path(input_folder).iterdir()):
        match = pattern.match(path.name)
        if match and path.is_file():
            cases.setdefault(match.group(1), []).append(path)
    found = {}
    for case, files in cases.items():
        problems = []
        for path in files:  # one file per channel: name the channel files that are wrong
            data = np.asarray(reader.read_images([str(path)])[0])
            if np.issubdtype(data.dtype, np.floating):
                nan, inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
                counts = [f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "Inf")) if n]
                if counts:
                    problems.append(f"{' and '.join(counts)} in {path.name}")
        if problems:
            found[case] = "; ".join(problems)
    return found


def check_inputs_finite(input_folder: str, model_folder: str) -> None:
    """Refuse a prediction whose input cases hold NaN or Inf, naming each case (checked with the
    trained model's dataset.json and plans, as ``nnUNetv2_predict`` reads them)."""
    if not os.path.isdir(input_folder) or not os.path.isfile(os.path.join(model_folder, "dataset.json")):
        return  # nnU-Net's own errors name a missing input folder; preflight names an untrained model
    with open(os.path.join(model_folder, "dataset.json")) as f:
        file_ending = json.load(f)["file_ending"]
    reader = PlansManager(os.path.join(model_folder, "plans.json")).image_reader_writer_class()
    found = nonfinite_cases(input_folder, file_ending, reader if not isinstance(reader, type) else reader())
    if found:
        listed = ", ".join(f"{case} ({what})" for case, what in found.items())
        raise NonFiniteInputError(
            f"{len(found)} input case(s) in {input_folder} contain NaN or Inf values, which nnU-Net's "
            f"normalisation spreads over the whole image: {listed}. Replace those values "
            "(e.g. numpy.nan_to_num) or leave the cases out, then predict again")
