"""2.5D for nnU-Net's ``2d`` configuration: neighbouring slices as extra input channels.

nnU-Net's ``2d`` configuration cuts each training patch from one slice and predicts a volume
slice by slice. :func:`stack_slices` writes a new raw dataset in which every channel of every
volume is joined by its ``k`` neighbouring slices on each side (edge slices repeated), so each
2d slice the network sees carries ``2k + 1`` slices of context per channel. Everything else is
left to nnU-Net: labels are copied unchanged, every image keeps its geometry (spacing, origin,
direction), and planning, training, ``nnUNetv2_predict`` and its volume export work as on any
dataset.

* The slice axis is the one nnU-Net's ``2d`` configuration slices along: the axis of largest
  median spacing (the planner's ``transpose_forward[0]``; ties go to the first axis, as
  ``np.argmax`` does there).
* Neighbour channels keep their channel's normalisation: a name nnU-Net maps to a scheme
  (``CT``, ``zscore``, ``rescale_to_0_1``, ...; matched case-insensitively) is repeated as it
  is, since ``CT-1`` would fall back to z-score; any other name (z-score by default) gets the
  offset as a suffix (``T2-1``, ``T2``, ``T2+1``), which still maps to z-score.
* Channels are ordered channel by channel, offsets ``-k .. +k``: one CT channel with ``k=1``
  gives three channels, so a pretrained RGB patch embedding takes them unchanged.
* Images are read with nnU-Net's reader for the file ending (SimpleITK or nibabel) and written
  back with the same library and geometry; integer images stay integers.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel
import numpy as np
import SimpleITK as sitk
from nnunetv2.imageio.nibabel_reader_writer import NibabelIO
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import (
    channel_name_to_normalization_mapping,
)

__all__ = ["StackResult", "SliceStackError", "neighbour_channel_names", "slice_axis", "stack_images",
           "stack_slices", "stack_volume"]

_DATASET_FOLDER = re.compile(r"^Dataset(\d{3})_\w+$")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>\.[A-Za-z0-9.]+)$")


class SliceStackError(ValueError):
    """Input that cannot be stacked; the message names the problem and the fix."""


@dataclass
class StackResult:
    """What :func:`stack_slices` / :func:`stack_images` wrote."""

    folder: Path
    slice_axis: int
    spacing: tuple[float, ...]  # median spacing per array axis, as nnU-Net reads it
    channel_names: dict[str, str]
    cases: int


def neighbour_channel_names(channel_names: dict[str, str], neighbours: int) -> dict[str, str]:
    """dataset.json ``channel_names`` of the stacked dataset (see the module docstring)."""
    out: dict[str, str] = {}
    for index in sorted(channel_names, key=int):
        name = channel_names[index]
        mapped = name.casefold() in channel_name_to_normalization_mapping
        for offset in range(-neighbours, neighbours + 1):
            suffix = "" if mapped or offset == 0 else f"{offset:+d}"
            out[str(len(out))] = f"{name}{suffix}"
    return out


def slice_axis(spacings: list[list[float]]) -> tuple[int, tuple[float, ...]]:
    """The axis nnU-Net's ``2d`` configuration slices along, and the median spacing it is read from."""
    median = np.percentile(np.asarray(spacings, dtype=np.float64), 50, axis=0)
    return int(np.argmax(median)), tuple(float(s) for s in median)


def stack_volume(volume: np.ndarray, axis: int, neighbours: int) -> list[np.ndarray]:
    """``2k + 1`` copies of ``volume`` shifted along ``axis`` by ``-k .. +k`` slices, edges repeated."""
    n = volume.shape[axis]
    return [np.take(volume, np.clip(np.arange(n) + offset, 0, n - 1), axis=axis)
            for offset in range(-neighbours, neighbours + 1)]


def stack_slices(source: str | int | Path, destination: str | Path, neighbours: int,
                 axis: int | None = None, verbose: bool = True) -> StackResult:
    """Write the 2.5D copy of raw dataset ``source`` (id, name or folder) as ``destination``
    (``DatasetNNN_Name`` under ``$nnUNet_raw``, or a folder path with that name)."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    _check_neighbours(neighbours)
    src = _source_folder(source)
    dst = _destination_folder(destination, src)
    dataset_json = json.loads((src / "dataset.json").read_text())
    training = get_filenames_of_train_images_and_targets(str(src), dataset_json)
    ending = dataset_json["file_ending"]
    has_test = (src / "imagesTs").is_dir() and any((src / "imagesTs").glob(f"*{ending}"))
    test_cases = _cases_in(src / "imagesTs", ending) if has_test else {}
    reader = _reader(dataset_json, next(iter(training.values()))["images"][0])
    cases = [(case, files["images"], "imagesTr") for case, files in sorted(training.items())]
    cases += [(case, files, "imagesTs") for case, files in sorted(test_cases.items())]
    axis, spacing = _axis_for(reader, [files for _, files, _ in cases], axis, verbose)

    for case, files, split in cases:
        _write_case(reader, files, dst / split, case, ending, axis, neighbours)
    for case, files in training.items():
        (dst / "labelsTr").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files["label"], dst / "labelsTr" / f"{case}{ending}")
    if (src / "labelsTs").is_dir():
        shutil.copytree(src / "labelsTs", dst / "labelsTs")
    names = neighbour_channel_names(dataset_json["channel_names"], neighbours)
    stacked = {k: v for k, v in dataset_json.items() if k not in ("dataset", "channel_names")}
    stacked["channel_names"] = names
    stacked["stacked_slices"] = {"source": src.name, "neighbours": neighbours, "slice_axis": axis}
    (dst / "dataset.json").write_text(json.dumps(stacked, indent=4))
    if verbose:
        print(f"wrote {dst}: {len(cases)} cases, {len(names)} channels {list(names.values())}")
    return StackResult(dst, axis, spacing, names, len(cases))


def stack_images(folder: str | Path, output: str | Path, neighbours: int, axis: int | None = None,
                 verbose: bool = True) -> StackResult:
    """The same for a folder of images to predict (``CASE_XXXX<ending>``). Give ``axis`` (the one
    printed for the training dataset) when these images' median spacing could point elsewhere."""
    _check_neighbours(neighbours)
    folder, output = Path(folder), Path(output)
    if not folder.is_dir():
        raise SliceStackError(f"no folder {folder}: give the folder of images to stack (CASE_0000.nii.gz, ...)")
    endings = {m["ending"] for p in folder.iterdir() if (m := _CHANNEL_FILE.match(p.name))}
    if len(endings) != 1:
        raise SliceStackError(f"{folder} must hold images named CASE_XXXX<ending> with one file ending; "
                              f"found endings {sorted(endings) or 'none'}")
    ending = endings.pop()
    cases = _cases_in(folder, ending)
    _refuse_non_empty(output)
    reader = _reader({"file_ending": ending}, next(iter(cases.values()))[0])
    axis, spacing = _axis_for(reader, list(cases.values()), axis, verbose)
    for case, files in sorted(cases.items()):
        _write_case(reader, files, output, case, ending, axis, neighbours)
    channels = len(next(iter(cases.values())))
    if verbose:
        print(f"wrote {output}: {len(cases)} cases, {channels * (2 * neighbours + 1)} channels each")
    return StackResult(output, axis, spacing, {}, len(cases))


# -- helpers ---------------------------------------------------------------------------


def _check_neighbours(neighbours: int) -> None:
    if not isinstance(neighbours, int) or neighbours < 1:
        raise SliceStackError(f"--neighbours must be a whole number >= 1 (slices on each side), got {neighbours!r}")


def _source_folder(source: str | int | Path) -> Path:
    path = Path(str(source))
    if not (path / "dataset.json").is_file():
        from nnunetv2.paths import nnUNet_raw
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

        try:
            path = Path(str(nnUNet_raw)) / maybe_convert_to_dataset_name(str(source))
        except RuntimeError as err:
            raise SliceStackError(f"no raw dataset {source!r}: {err}. Give a dataset id, a DatasetNNN_Name "
                                  "under $nnUNet_raw or a folder holding dataset.json") from None
    if not (path / "dataset.json").is_file():
        raise SliceStackError(f"{path} has no dataset.json: give a raw nnU-Net dataset")
    return path


def _destination_folder(destination: str | Path, source: Path) -> Path:
    path = Path(destination)
    if len(path.parts) == 1:  # a bare name: next to the source, as nnU-Net expects it under $nnUNet_raw
        path = source.parent / path
    match = _DATASET_FOLDER.match(path.name)
    if not match:
        raise SliceStackError(f"destination {path.name!r} must be named DatasetNNN_Name (three digits: a new id) "
                              "for nnU-Net to find it, e.g. Dataset982_CT25D")
    taken = [p.name for p in path.parent.glob(f"Dataset{match[1]}_*") if p.name != path.name]
    if taken or source.name.startswith(f"Dataset{match[1]}_"):
        raise SliceStackError(f"dataset id {match[1]} is already taken by {(taken or [source.name])[0]}; "
                              "pick an unused id for the stacked dataset")
    _refuse_non_empty(path)
    return path


def _refuse_non_empty(path: Path) -> None:
    if path.exists() and any(path.iterdir()):
        raise SliceStackError(f"{path} already exists and is not empty; remove it or pick another name")


def _cases_in(folder: Path, ending: str) -> dict[str, list[str]]:
    """case -> its channel files in channel order, as nnU-Net's predictor groups ``imagesTs``."""
    cases: dict[str, dict[int, str]] = {}
    for p in folder.iterdir():
        m = _CHANNEL_FILE.match(p.name)
        if m and m["ending"] == ending:
            cases.setdefault(m["case"], {})[int(m["channel"])] = str(p)
    if not cases:
        raise SliceStackError(f"no CASE_XXXX{ending} images in {folder}")
    for case, channels in cases.items():
        if sorted(channels) != list(range(len(channels))):
            raise SliceStackError(f"case {case!r} in {folder} has channels {sorted(channels)}; expected 0..N-1")
    return {case: [channels[i] for i in sorted(channels)] for case, channels in cases.items()}


def _reader(dataset_json: dict, example_file: str):
    """nnU-Net's reader for the dataset; only volume readers whose writer we mirror are taken."""
    reader = determine_reader_writer_from_dataset_json(dataset_json, example_file, verbose=False)
    if reader not in (SimpleITKIO, NibabelIO):
        raise SliceStackError(f"nnU-Net reads these images with {reader.__name__}; stack-slices takes volumes read by "
                              "SimpleITKIO (.nii.gz, .nrrd, .mha) or NibabelIO (without reorientation)")
    return reader()


def _axis_for(reader, cases: list[list[str]], axis: int | None, verbose: bool) -> tuple[int, tuple[float, ...]]:
    spacings = [reader.read_images(files[:1])[1]["spacing"] for files in cases]
    chosen, median = slice_axis(spacings)
    if axis is not None:
        if axis not in range(len(median)):
            raise SliceStackError(f"--slice-axis {axis} is not an axis of these {len(median)}D volumes")
        chosen = axis
    if verbose:
        how = "as given" if axis is not None else "nnU-Net's 2d slice axis: the largest median spacing"
        print(f"slice axis {chosen} of the (z, y, x) arrays nnU-Net reads ({how}; median spacing "
              f"{', '.join(f'{s:g}' for s in median)})")
    return chosen, median


def _write_case(reader, files: list[str], folder: Path, case: str, ending: str, axis: int, neighbours: int) -> None:
    data, properties = reader.read_images(files)
    # a 2D image reads as (1, 1, H, W) and a 4D file as several channels: only 3D files are volumes here
    if len(properties.get("sitk_stuff", {}).get("spacing", (0, 0, 0))) != 3 or data.shape[0] != len(files):
        raise SliceStackError(f"{files[0]} is not a 3D volume (one channel per file); stack-slices stacks the "
                              "slices of volumes")
    folder.mkdir(parents=True, exist_ok=True)
    index = 0
    for channel in data:
        for shifted in stack_volume(channel, axis, neighbours):
            _write_image(_compact(shifted), properties, str(folder / f"{case}_{index:04d}{ending}"))
            index += 1


def _compact(volume: np.ndarray) -> np.ndarray:
    """nnU-Net reads float32; write integers back as integers (CT in int16) when nothing is lost."""
    if np.all(np.isfinite(volume)) and np.array_equal(volume, np.round(volume)):
        for dtype in (np.int16, np.int32):
            info = np.iinfo(dtype)
            if volume.min() >= info.min and volume.max() <= info.max:
                return volume.astype(dtype)
    return volume.astype(np.float32)


def _write_image(volume: np.ndarray, properties: dict, path: str) -> None:
    """The image counterpart of the reader's ``write_seg``: the same library, the same geometry."""
    if "sitk_stuff" in properties:
        image = sitk.GetImageFromArray(volume)
        image.SetSpacing(properties["sitk_stuff"]["spacing"])
        image.SetOrigin(properties["sitk_stuff"]["origin"])
        image.SetDirection(properties["sitk_stuff"]["direction"])
        sitk.WriteImage(image, path, True)
    else:
        affine = properties["nibabel_stuff"]["original_affine"]
        nibabel.save(nibabel.Nifti1Image(volume.transpose((2, 1, 0)), affine=affine), path)
