"""``segzoo-nnunet`` refuses bad input in one line, before it writes anything.

In-process through :func:`nnunet_bridge.cli.main` on a hand-made nnU-Net folder tree (plans,
a results folder with a real but truncated checkpoint): unknown configuration, dataset,
model, fold and trainer; an untrained fold; a damaged checkpoint; the same refusal under
torchrun and ``-num_gpus``. One subprocess proves no traceback reaches stderr and
``--debug`` shows it. nnU-Net's real trainer search (not a stand-in) is guarded, also in
the demo's predictor.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from nnunet_bridge.cli import main
from tests.nnunet_runs import ROOT, nnunet_env, refused_in_one_line

DATASET_ID, DATASET = 977, "Dataset977_Typos"
ZOO = "2d_segformer_dinov3_small"
RUN = f"nnUNetTrainerSegZoo__nnUNetPlans__{ZOO}"


@pytest.fixture
def nn_tree(tmp_path, monkeypatch) -> dict:
    """nnU-Net's three folders: plans holding ``2d`` and the zoo configuration; fold 0 of the zoo
    run has a checkpoint cut in half (as an interrupted copy leaves it), fold 1 does not exist."""
    env = nnunet_env(tmp_path)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, env[key])  # nnunetv2.paths reads them when called
    monkeypatch.delenv("SEGZOO_DEBUG", raising=False)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    (Path(env["nnUNet_raw"]) / DATASET).mkdir(parents=True)
    plans = {"dataset_name": DATASET, "configurations": {
        "2d": {"patch_size": [64, 64], "batch_size": 2},
        ZOO: {"inherits_from": "2d",
              "architecture": {"network_class_name": "nnunet_bridge.network.build_zoo_network"}}}}
    plans_file = Path(env["nnUNet_preprocessed"]) / DATASET / "nnUNetPlans.json"
    plans_file.parent.mkdir(parents=True)
    plans_file.write_text(json.dumps(plans, indent=4))
    run = Path(env["nnUNet_results"]) / DATASET / RUN
    (run / "fold_0").mkdir(parents=True)
    (run / "plans.json").write_text(json.dumps(plans))
    buffer = io.BytesIO()
    torch.save({"network_weights": {"w": torch.zeros(64, 64)}, "trainer_name": "nnUNetTrainerSegZoo"}, buffer)
    (run / "fold_0" / "checkpoint_final.pth").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return {"env": env, "plans_file": plans_file, "plans_bytes": plans_file.read_bytes(), "run": run,
            "results": Path(env["nnUNet_results"]) / DATASET, "base": tmp_path}


_refused = refused_in_one_line


def _nothing_written(tree: dict) -> None:
    assert tree["plans_file"].read_bytes() == tree["plans_bytes"]
    assert sorted(p.name for p in tree["results"].iterdir()) == [RUN]


def test_a_misspelt_configuration_is_refused_by_every_command_and_nothing_is_written(nn_tree, capsys, tmp_path):
    typo = "2d_segformer_dinov3_smal"
    expected = (f"configuration '{typo}' is not in the plans ({nn_tree['plans_file']}); did you mean {ZOO}? "
                f"Only `segzoo-nnunet plan` adds configurations: segzoo-nnunet plan {DATASET_ID} --config "
                f"YOUR.yaml --name {typo}")
    images = tmp_path / "images"
    for argv in (["train", str(DATASET_ID), typo, "0", "-device", "cpu"],
                 ["predict", "-i", str(images), "-o", str(tmp_path / "out"), "-d", str(DATASET_ID), "-c", typo,
                  "-f", "0"],
                 ["export", "-d", str(DATASET_ID), "-c", typo, "-f", "0", "-o", str(tmp_path / "x.onnx")],
                 ["compare", str(DATASET_ID), typo]):
        assert _refused(argv, capsys) == f"segzoo-nnunet {argv[0]}: error: {expected}", argv
        _nothing_written(nn_tree)
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.onnx").exists()

    # a registered model that is not planned: the refusal gives the exact plan command
    line = _refused(["train", str(DATASET_ID), "2d_upernet_dinov3_small", "0"], capsys)
    assert line.endswith(f"segzoo-nnunet plan {DATASET_ID} --model upernet_dinov3_small")
    _nothing_written(nn_tree)


def test_the_refusal_comes_before_torchrun_or_spawned_processes(nn_tree, capsys, monkeypatch):
    typo = "2d_segformer_dinov3_smal"
    import torch.distributed as dist
    import torch.multiprocessing as mp

    def never(*_args, **_kwargs):
        raise AssertionError("a process group or a process was started")

    monkeypatch.setattr(mp, "spawn", never)
    monkeypatch.setattr(dist, "init_process_group", never)
    spawned = _refused(["train", str(DATASET_ID), typo, "0", "-num_gpus", "2", "-device", "cpu"], capsys)
    for rank in ("0", "1"):  # what each torchrun process sees
        with monkeypatch.context() as env:
            for key, value in dict(RANK=rank, WORLD_SIZE="2", LOCAL_RANK=rank, LOCAL_WORLD_SIZE="2").items():
                env.setenv(key, value)
            assert _refused(["train", str(DATASET_ID), typo, "0", "-device", "cpu"], capsys) == spawned
    assert f"configuration '{typo}' is not in the plans" in spawned
    _nothing_written(nn_tree)


def test_unknown_dataset_model_fold_and_trainer_are_one_line(nn_tree, capsys, tmp_path):
    line = _refused(["plan", "12345", "--model", "segformer_dinov3_small"], capsys)
    assert line.startswith("segzoo-nnunet plan: error: no dataset '12345' in nnUNet_raw=")
    assert line.endswith("check the dataset id and those environment variables")
    line = _refused(["predict", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "-d", "12345", "-c", ZOO], capsys)
    assert "no dataset '12345'" in line
    line = _refused(["export", "-d", "12345", "-c", ZOO, "-f", "0", "-o", str(tmp_path / "x.onnx")], capsys)
    assert line.startswith("segzoo-nnunet export: error: no dataset '12345' in nnUNet_raw=")
    line = _refused(["plan", str(DATASET_ID), "--model", "segformer_dinov3_smal"], capsys)
    assert "segformer_dinov3_smal" in line and "segformer_dinov3_small" in line  # the closest registered name
    assert _refused(["train", str(DATASET_ID), ZOO, "O"], capsys) == (
        "segzoo-nnunet train: error: fold 'O' is not a fold: give 0-4 (nnU-Net's five-fold split) or 'all'")
    line = _refused(["train", str(DATASET_ID), ZOO, "0", "-tr", "nnUNetTrainerSegZo"], capsys)
    assert line.startswith("segzoo-nnunet train: error: no trainer class 'nnUNetTrainerSegZo' in nnU-Net's trainer "
                           "folder or nnUNet_extTrainer (") and "check -tr" in line
    _nothing_written(nn_tree)


def test_untrained_fold_and_truncated_checkpoint_name_the_fix(nn_tree, capsys, tmp_path):
    fold1 = nn_tree["run"] / "fold_1"
    common = ["-i", str(tmp_path), "-o", str(tmp_path / "o"), "-d", str(DATASET_ID), "-c", ZOO]
    line = _refused(["predict", *common, "-f", "1", "-device", "cpu"], capsys)
    assert line == (f"segzoo-nnunet predict: error: fold 1 of {ZOO} (nnUNetTrainerSegZoo) is not trained: no "
                    f"{fold1 / 'checkpoint_final.pth'}; train it with: segzoo-nnunet train {DATASET_ID} {ZOO} 1")
    line = _refused(["export", "-d", str(DATASET_ID), "-c", ZOO, "-f", "1", "-o", str(tmp_path / "x.onnx")], capsys)
    assert line == (f"segzoo-nnunet export: error: fold 1 of {ZOO} (nnUNetTrainerSegZoo) is not trained: no "
                    f"{fold1 / 'checkpoint_final.pth'}; train it with: segzoo-nnunet train {DATASET_ID} {ZOO} 1")
    final = nn_tree["run"] / "fold_0" / "checkpoint_final.pth"
    for argv in (["predict", *common, "-f", "0"],
                 ["export", "-d", str(DATASET_ID), "-c", ZOO, "-f", "0", "-o", str(tmp_path / "x.onnx")]):
        line = _refused(argv, capsys)
        assert line.startswith(f"segzoo-nnunet {argv[0]}: error: checkpoint {final} is damaged (")
        assert line.endswith(f"truncated or not a PyTorch file); copy it again, or train the fold again with: "
                             f"segzoo-nnunet train {DATASET_ID} {ZOO} 0")
    with pytest.raises((RuntimeError, OSError)):  # what nnU-Net's predictor would have met (torch.load)
        torch.load(final, weights_only=False)


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(nn_tree, monkeypatch):
    """In a real process: stderr holds one line and no traceback; --debug and SEGZOO_DEBUG=1 raise."""
    # a validation summary cut short: json's own error, which no check of the bridge expects
    summary = nn_tree["run"] / "fold_0" / "validation" / "summary.json"
    summary.parent.mkdir()
    summary.write_text('{"foreground_mean": {"Di')
    argv = ["compare", str(DATASET_ID), ZOO, "--folds", "0"]
    plain = subprocess.run([sys.executable, "-m", "nnunet_bridge", *argv], env=dict(nn_tree["env"]),
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr, plain.stderr
    [line] = plain.stderr.strip().splitlines()
    assert line == ("segzoo-nnunet compare: error: JSONDecodeError: Unterminated string starting at: line 1 "
                    "column 22 (char 21) (run again with --debug or SEGZOO_DEBUG=1 for the traceback)")
    with pytest.raises(json.JSONDecodeError):  # --debug (in-process: a Python start costs seconds) raises it
        main([*argv, "--debug"])
    monkeypatch.setenv("SEGZOO_DEBUG", "1")
    with pytest.raises(json.JSONDecodeError):
        main(argv)


# -- nnU-Net's trainer lookup ----------------------------------------------------------


class _ImportsOnFirstRead(types.ModuleType):
    """A module whose ``__file__``, read for the first time, imports another module: the race
    nnU-Net's search meets while it walks ``sys.modules`` in a process full of lazy imports."""

    def __init__(self) -> None:
        super().__init__("_segzoo_lazy_module")
        self.reads = 0

    @property
    def __file__(self) -> str:  # type: ignore[override]
        self.reads += 1
        if self.reads == 1:
            sys.modules["_segzoo_imported_while_walking"] = types.ModuleType("_segzoo_imported_while_walking")
        return "/nonexistent/_segzoo_lazy_module.py"


def test_nnunets_real_search_is_retried_after_the_sys_modules_race(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_bridge.trainer_lookup import UnknownTrainerError, find_trainer_class

    trainer = "nnUNetTrainerSegZooKilledAfterFirstCheckpoint"  # tests/nnunet_trainers: only the search finds it
    monkeypatch.setenv("nnUNet_extTrainer", str(ROOT / "tests" / "nnunet_trainers"))
    monkeypatch.delitem(sys.modules, "_segzoo_imported_while_walking", raising=False)
    monkeypatch.setitem(sys.modules, "_segzoo_lazy_module", _ImportsOnFirstRead())
    with pytest.raises(RuntimeError, match="changed size during iteration"):  # nnU-Net's own search, unguarded
        recursive_find_trainer_class_by_name(trainer)
    del sys.modules["_segzoo_imported_while_walking"]
    monkeypatch.setitem(sys.modules, "_segzoo_lazy_module", _ImportsOnFirstRead())
    found = find_trainer_class(trainer)  # the same real search, retried
    assert found.__name__ == trainer and found.__module__.endswith("kill_trainers")
    with pytest.raises(UnknownTrainerError, match="no trainer class 'nnUNetTrainerTypo'"):
        find_trainer_class("nnUNetTrainerTypo")


def test_the_demos_predictor_looks_trainers_up_through_the_guard(nn_tree, monkeypatch, tmp_path):
    """nnU-Net's predictor resolves the trainer by name inside ``initialize_from_trained_model_folder``;
    the demo must call it with the bridge's lookup in place (its other calls are guarded too)."""
    import nnunetv2.inference.predict_from_raw_data as predict_module

    from nnunet_bridge.demo import pipeline as demo
    from nnunet_bridge.trainer_lookup import find_trainer_class

    (Path(nn_tree["env"]["nnUNet_raw"]) / f"Dataset{demo.DEMO_DATASET_ID}_Demo").mkdir()
    nnunet_search = predict_module.recursive_find_trainer_class_by_name
    seen = []

    def initialize(self, folder, use_folds, checkpoint_name):
        lookup = predict_module.recursive_find_trainer_class_by_name
        seen.append((lookup is not nnunet_search, lookup("nnUNetTrainerSegZoo")))
        raise KeyboardInterrupt  # stop before reading the (fake) model folder

    monkeypatch.setattr(predict_module.nnUNetPredictor, "initialize_from_trained_model_folder", initialize)
    with pytest.raises(KeyboardInterrupt):
        demo._predict("nnUNetTrainerSegZoo", ZOO, tmp_path, tmp_path / "out", torch.device("cpu"))
    assert seen == [(True, find_trainer_class("nnUNetTrainerSegZoo"))]
    assert predict_module.recursive_find_trainer_class_by_name is nnunet_search  # restored afterwards


def test_a_highres_plan_that_cannot_be_made_is_refused_and_nothing_is_written(nn_tree, capsys, tmp_path):
    plan = ["plan", str(DATASET_ID), "--model", "segformer_dinov3_small", "--patch-size"]
    assert _refused([*plan, "0", "64"], capsys).endswith(
        "--patch-size takes two positive sizes, height and width; got [0, 64]")
    both = tmp_path / "both.yaml"
    both.write_text("train:\n  patch_size: [64, 64]\n")
    assert "train.patch_size in the YAML sets only the patch. Give one of them" in _refused(
        [*plan, "96", "96", "--config", str(both)], capsys)
    # the hand-made plans have no median image size: nothing to resample from
    assert "run `nnUNetv2_plan_and_preprocess -d DATASET -c 2d` again" in _refused([*plan, "96", "96"], capsys)
    _nothing_written(nn_tree)
