"""No checkpoint runs code: every command that reads one refuses a pickle that calls a function.

The hostile file is a real torch checkpoint whose pickle touches a marker file when loaded
(``pathlib.Path.touch``, harmless): ``predict``, ``export``, ``compare`` and
``train -pretrained_weights`` refuse it through :func:`nnunet_bridge.cli.main` on a hand-made
nnU-Net folder tree. The trainer's side (``--c``, ``-pretrained_weights`` read in ``initialize``,
checkpoints that load with plain ``weights_only=True``, stock nnU-Net checkpoints still read)
is tested in test_nnunet_e2e.py, on its preprocessed dataset.
"""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import pytest
import torch

from nnunet_bridge.checkpoint_files import TRUST_ENV, load_checkpoint_file
from nnunet_bridge.cli import main
from tests.nnunet_runs import nnunet_env, refused_in_one_line

DATASET_ID, DATASET = 978, "Dataset978_Hostile"
ZOO = "2d_segformer_dinov3_small"
RUN = f"nnUNetTrainerSegZoo__nnUNetPlans__{ZOO}"


class TouchOnLoad:
    """Unpickling calls ``Path(marker).touch()``: what any code in a hostile pickle could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def _hostile(path: Path, marker: Path, checkpoint: dict | None = None) -> Path:
    checkpoint = dict(checkpoint or {"network_weights": {"w": torch.zeros(2)}, "trainer_name": "nnUNetTrainerSegZoo"})
    checkpoint["_best_ema"] = TouchOnLoad(marker)
    torch.save(checkpoint, path)
    return path


@pytest.fixture
def hostile_tree(tmp_path, monkeypatch) -> dict:
    """nnU-Net's folders with the zoo configuration planned and fold 0 holding the hostile checkpoint."""
    env = nnunet_env(tmp_path)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("SEGZOO_DEBUG", raising=False)
    monkeypatch.setenv(TRUST_ENV, "0")  # recorded, so a train --trust-checkpoint here cannot leak it
    (Path(env["nnUNet_raw"]) / DATASET).mkdir(parents=True)
    plans = {"dataset_name": DATASET, "configurations": {
        "2d": {"patch_size": [64, 64], "batch_size": 2},
        ZOO: {"inherits_from": "2d", "architecture": {"network_class_name": "nnunet_bridge.network.build_zoo_network"}}}}
    plans_file = Path(env["nnUNet_preprocessed"]) / DATASET / "nnUNetPlans.json"
    plans_file.parent.mkdir(parents=True)
    plans_file.write_text(json.dumps(plans))
    run = Path(env["nnUNet_results"]) / DATASET / RUN
    (run / "fold_0").mkdir(parents=True)
    (run / "plans.json").write_text(json.dumps(plans))
    (run / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "disc": 1}, "channel_names": {"0": "R"},
                                                  "numTraining": 1, "file_ending": ".png"}))
    marker = tmp_path / "code_ran"
    checkpoint = _hostile(run / "fold_0" / "checkpoint_final.pth", marker)
    return {"marker": marker, "checkpoint": checkpoint, "base": tmp_path}


def _refusal(argv: list[str], capsys) -> str:
    return refused_in_one_line(argv, capsys)


def _names_the_global_and_the_flag(line: str, command: str, path: Path) -> None:
    # how the payload pickles: getattr(pathlib.Path, "touch") applied to a PosixPath
    assert line.startswith(f"segzoo-nnunet {command}: error: refused to load checkpoint {str(path)!r}: its pickle "
                           "needs builtins.getattr, pathlib.Path, pathlib.PosixPath, which"), line
    assert "unpickling it could run code" in line and "pass --trust-checkpoint" in line, line


def test_every_command_refuses_a_checkpoint_that_runs_code(hostile_tree, capsys):
    base, final = hostile_tree["base"], hostile_tree["checkpoint"]
    commands = {
        "predict": ["predict", "-i", str(base), "-o", str(base / "out"), "-d", str(DATASET_ID), "-c", ZOO, "-f", "0",
                    "-device", "cpu"],
        "export": ["export", "-d", str(DATASET_ID), "-c", ZOO, "-f", "0", "-o", str(base / "x.onnx")],
        "compare": ["compare", str(DATASET_ID), ZOO, "--folds", "0"],
        "train": ["train", str(DATASET_ID), ZOO, "0", "-pretrained_weights", str(final), "-device", "cpu"],
    }
    for command, argv in commands.items():
        _names_the_global_and_the_flag(_refusal(argv, capsys), command, final)
        assert not hostile_tree["marker"].exists(), command
    assert not (base / "out").exists() and not (base / "x.onnx").exists()


def test_trust_checkpoint_loads_as_nnunet_does(hostile_tree, capsys):
    """The payload is live: with --trust-checkpoint each command reads the file as nnU-Net does
    (weights_only=False), and the payload runs (whatever the command does after that)."""
    base, marker = hostile_tree["base"], hostile_tree["marker"]
    with pytest.raises(Exception, match="refused to load"):
        load_checkpoint_file(hostile_tree["checkpoint"])
    assert not marker.exists()
    for argv in (["export", "-d", str(DATASET_ID), "-c", ZOO, "-f", "0", "-o", str(base / "x.onnx")],
                 ["compare", str(DATASET_ID), ZOO, "--folds", "0"],
                 ["predict", "-i", str(base / "in"), "-o", str(base / "out"), "-d", str(DATASET_ID), "-c", ZOO,
                  "-f", "0", "-device", "cpu"]):
        main([*argv, "--trust-checkpoint"])
        capsys.readouterr()
        assert marker.exists(), argv
        marker.unlink()
