"""End to end through real nnU-Net v2 on a tiny synthetic fundus dataset with a tiny zoo model.

plan_and_preprocess -> segzoo-nnunet plan -> train (validation writes summary.json) ->
segzoo-nnunet predict == stock nnUNetv2_predict -> a run killed after its first checkpoint
continues as it was started with --c -> -pretrained_weights across class counts -> a 1-channel dataset through the
compatibility entry point. Preprocessing happens once per dataset (module fixtures).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import warnings
import yaml
from PIL import Image

import segzoo

from nnunet_bridge.demo.synthetic import fundus_case, write_fundus_dataset
from nnunet_bridge import EXT_TRAINER_DIR
from tests.nnunet_runs import ROOT, bridge, nnunet_env, run
from tests.tiny_models import TINY_VIT

RGB_ID, GREY_ID = 990, 991
CONFIG_NAME = "2d_segformer_dinov3_small"
TINY_CONFIG = {
    "model": {
        "name": "segformer_dinov3_small",
        "pretrained": False,
        "decoder_hidden_size": 32,
        "kwargs": {"backbone_kwargs": dict(TINY_VIT)},
    },
    "lora": {"enabled": False},
    "train": {"num_epochs": 2, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1,
              "warmup_epochs": 1, "save_every": 1},
}

# one worker runs this module: its tests share the module fixture's nnU-Net folders
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.xdist_group("nnunet_e2e")]


@pytest.fixture(scope="session")  # one per worker: xdist may interleave other modules' tests
def nn_env():
    """nnU-Net folders with the RGB and the 1-channel dataset planned and preprocessed (2d)."""
    # a private folder: pytest's shared basetemp is pruned by concurrent pytest runs
    base = Path(tempfile.mkdtemp(prefix="segzoo_nnunet_e2e_"))
    try:
        yield _prepare(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _prepare(base: Path) -> dict:
    env = nnunet_env(base)
    write_fundus_dataset(env["nnUNet_raw"], RGB_ID, num_train=6, num_test=2, size=64, channels=3)
    write_fundus_dataset(env["nnUNet_raw"], GREY_ID, name="SyntheticGrey", num_train=6, num_test=1, size=64,
                         channels=1, seed=1)
    # one command for both datasets: a Python start costs more than planning one of them
    run(["nnUNetv2_plan_and_preprocess", "-d", str(RGB_ID), str(GREY_ID), "-c", "2d", "-np", "1", "-npfp", "1"], env)
    config_file = base / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(TINY_CONFIG))
    # nnU-Net's planner needs >= 1 data-augmentation worker; training runs them in-process
    train_env = dict(env, nnUNet_n_proc_DA="0")
    return {"env": env, "train_env": train_env, "base": base, "config": config_file}


def test_plan_adds_an_inheriting_zoo_configuration(nn_env):
    out = bridge(["plan", str(RGB_ID), "--config", str(nn_env["config"])], nn_env["env"])
    assert CONFIG_NAME in out
    plans = _plans(nn_env, RGB_ID)
    conf = plans["configurations"][CONFIG_NAME]
    assert conf["inherits_from"] == "2d"
    assert conf["architecture"]["network_class_name"] == "nnunet_bridge.network.build_zoo_network"
    kwargs = conf["architecture"]["arch_kwargs"]
    assert kwargs["model_name"] == "segformer_dinov3_small" and kwargs["lora"] is None
    assert kwargs["input_normalization"] == "backbone"  # channels named rgb_to_0_1
    assert all(s % 16 == 0 for s in conf["patch_size"])
    assert conf["segzoo"]["train"]["batch_size"] == conf["batch_size"] >= 2


def test_train_validate_predict_and_refuse_a_replan(nn_env):
    env, train_env = nn_env["env"], nn_env["train_env"]
    _ensure_planned(nn_env)  # the plan test may have run on another worker
    bridge(["train", str(RGB_ID), CONFIG_NAME, "0", "-device", "cpu"], train_env)
    fold = _fold_dir(nn_env, RGB_ID, 0)
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"} and "Dice" in summary["foreground_mean"]
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2 and final["trainer_name"] == "nnUNetTrainerSegZoo"
    assert final["segzoo_config"]["model"]["name"] == "segformer_dinov3_small"
    assert final["segzoo_arch"]["model_name"] == "segformer_dinov3_small"
    assert final["lr_scheduler_state"]["last_epoch"] == 1
    assert yaml.safe_load((fold / "segzoo_config.yaml").read_text())["train"]["num_epochs"] == 2
    assert not list(fold.glob("*.tmp"))

    # predictions: the bridge command and stock nnUNetv2_predict give identical files
    images = Path(env["nnUNet_raw"]) / f"Dataset{RGB_ID}_SyntheticFundus" / "imagesTs"
    ours, stock = nn_env["base"] / "pred_ours", nn_env["base"] / "pred_stock"
    common = ["-i", str(images), "-d", str(RGB_ID), "-c", CONFIG_NAME, "-f", "0", "-npp", "1", "-nps", "1"]
    bridge(["predict", "-o", str(ours), *common, "-device", "cpu"], env)
    run(["nnUNetv2_predict", "-o", str(stock), *common, "-tr", "nnUNetTrainerSegZoo", "-device", "cpu"],
         dict(env, nnUNet_extTrainer=EXT_TRAINER_DIR))
    names = sorted(p.name for p in ours.glob("*.png"))
    assert names == sorted(p.name for p in stock.glob("*.png")) and len(names) == 2
    for name in names:
        a, b = np.asarray(Image.open(ours / name)), np.asarray(Image.open(stock / name))
        assert a.shape == (64, 64) and np.array_equal(a, b)

    # a trained configuration is immutable: re-planning it with another model is refused
    changed = nn_env["base"] / "changed.yaml"
    changed.write_text(yaml.safe_dump({**TINY_CONFIG, "model": {**TINY_CONFIG["model"], "decoder_hidden_size": 16}}))
    err = bridge(["plan", str(RGB_ID), "--config", str(changed)], env, expect_fail=True)
    assert "already trained" in err and "decoder_hidden_size" in err


def test_killed_run_continues_as_it_was_started(nn_env):
    """A run started with ``--config`` (3 epochs; the plans say 2) and killed (SIGKILL) right after its first
    checkpoint_latest.pth leaves a whole checkpoint and no temporary file; ``--c`` without ``--config`` finishes
    it at epoch 3 with the learning rates of an uninterrupted run, and every log header, segzoo_config.yaml and
    the checkpoint show the configuration that ran."""
    from nnunet_bridge.training.optimisation import WarmupPolyLR

    trainer = "nnUNetTrainerSegZooKilledAfterFirstCheckpoint"  # tests/nnunet_trainers/kill_trainers.py
    env = dict(nn_env["train_env"], nnUNet_extTrainer=str(ROOT / "tests" / "nnunet_trainers"))
    fold = (nn_env["base"] / "results" / f"Dataset{RGB_ID}_SyntheticFundus"
            / f"{trainer}__nnUNetPlans__{CONFIG_NAME}" / "fold_1")
    _ensure_planned(nn_env)
    assert _plans(nn_env, RGB_ID)["configurations"][CONFIG_NAME]["segzoo"]["train"]["num_epochs"] == 2
    longer = nn_env["base"] / "longer.yaml"
    longer.write_text(yaml.safe_dump({"train": {"num_epochs": 3}}))
    train = ["train", str(RGB_ID), CONFIG_NAME, "1", "-tr", trainer, "-device", "cpu"]
    bridge([*train, "--config", str(longer)], env, expect_fail=True)
    assert not (fold / "checkpoint_final.pth").exists() and not list(fold.glob("*.tmp"))
    saved = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)  # never torn
    assert saved["current_epoch"] == 1 and saved["segzoo_config"]["train"]["num_epochs"] == 3

    out = bridge([*train, "--c"], env)  # no --config: the checkpoint's configuration, not the plans'
    assert "continuing with the configuration the run started with" in out and "train.num_epochs (3 -> 2)" in out
    assert _epochs_logged(_latest_log(fold)) == [1, 2]
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 3 and final["segzoo_config"] == saved["segzoo_config"]
    assert (fold / "validation" / "summary.json").is_file()
    # the learning rate of each epoch is the closed form of the 3-epoch schedule (not cut to 2)
    train_cfg = final["segzoo_config"]["train"]
    schedule = WarmupPolyLR(torch.optim.SGD([torch.zeros(1)], lr=3e-4), train_cfg["warmup_epochs"], 3,
                            train_cfg["poly_exponent"])
    expected = [3e-4 * schedule.factor(epoch) for epoch in range(3)]  # from scratch: 3e-4
    assert expected[2] > 0 and final["logging"]["lrs"] == pytest.approx(expected, rel=1e-6)
    # nnU-Net's log header ("the configuration used by this training") of both processes is the run's
    ran = yaml.safe_load((fold / "segzoo_config.yaml").read_text())
    assert ran == final["segzoo_config"]
    logged = [c for log in fold.glob("training_log_*.txt") for c in _logged_configurations(log.read_text())]
    assert len(logged) == 2 and all(c["segzoo"] == ran for c in logged)


def _logged_configurations(log: str) -> list[dict]:
    """The configuration dicts nnU-Net prints under "This is the configuration used by this training"."""
    import ast

    headers = log.split("This is the configuration used by this training:")[1:]
    return [ast.literal_eval(next(line.strip() for line in h.splitlines() if line.strip().startswith("{")))
            for h in headers]


def _checkpoint_of_a_run(nn_env, monkeypatch, tmp_path, train: dict | None = None) -> Path:
    """checkpoint_latest.pth after epoch 0 of a run started with ``--config`` holding ``train``."""
    from nnunet_bridge.trainer import CONFIG_ENV

    if train:
        started = tmp_path / "started.yaml"
        started.write_text(yaml.safe_dump({"train": train}))
        monkeypatch.setenv(CONFIG_ENV, str(started))
    trainer = _trainer(nn_env, monkeypatch, fold=2)
    path = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(path))
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    return path


def _continue(nn_env, monkeypatch, tmp_path, checkpoint, **sections: dict):
    """A trainer as ``--c`` (with ``--config`` holding ``sections``) builds it, after load_checkpoint."""
    from nnunet_bridge.trainer import CONFIG_ENV

    if sections:
        given = tmp_path / "given.yaml"
        given.write_text(yaml.safe_dump(sections))
        monkeypatch.setenv(CONFIG_ENV, str(given))
    trainer = _trainer_uninitialised(nn_env, monkeypatch, fold=2, continue_training=True)
    trainer.load_checkpoint(checkpoint)
    return trainer


def test_continue_adopts_the_checkpoints_configuration_and_logs_it(nn_env, monkeypatch, tmp_path, capsys):
    """--c without --config: the run's configuration (3 epochs, batch 3, lr 2e-4) over the plans' (2 epochs)."""
    from nnunet_bridge.config import config_to_dict

    path = _checkpoint_of_a_run(nn_env, monkeypatch, tmp_path, {"num_epochs": 3, "batch_size": 3, "initial_lr": 2e-4})
    capsys.readouterr()
    trainer = _continue(nn_env, monkeypatch, tmp_path, str(path))
    out = capsys.readouterr().out
    assert "continuing with the configuration the run started with" in out and "train.num_epochs (3 -> 2)" in out
    assert (trainer.num_epochs, trainer.batch_size, trainer.initial_lr) == (3, 3, 2e-4)
    assert trainer.lr_scheduler.num_epochs == 3 and trainer.current_epoch == 1
    trainer.lr_scheduler.step(2)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 * 0.5 ** 0.9)
    # nnU-Net's log header shows what runs, as segzoo_config.yaml and the checkpoint will
    trainer.print_plans()
    logged = _logged_configurations(capsys.readouterr().out)
    assert logged[0]["segzoo"] == config_to_dict(trainer.segzoo_config) == torch.load(
        path, map_location="cpu", weights_only=False)["segzoo_config"]
    assert logged[0]["batch_size"] == 3


def test_continue_with_a_config_may_extend_num_epochs(nn_env, monkeypatch, tmp_path, capsys):
    path = _checkpoint_of_a_run(nn_env, monkeypatch, tmp_path, {"num_epochs": 3})
    capsys.readouterr()
    trainer = _continue(nn_env, monkeypatch, tmp_path, str(path), train={"num_epochs": 5, "save_every": 2})
    out = capsys.readouterr().out
    assert "extends train.num_epochs from 3 to 5 (continuing at epoch 1)" in out
    assert "changes train.save_every (1 -> 2)" in out
    assert trainer.num_epochs == 5 and trainer.save_every == 2
    assert trainer.lr_scheduler.num_epochs == 5  # the restored scheduler decays to the new end
    trainer.lr_scheduler.step(3)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4 * 0.5 ** 0.9)


def test_continue_with_a_config_may_lower_the_learning_rate(nn_env, monkeypatch, tmp_path, capsys):
    """The way back from a diverged run: its last good checkpoint, --c with a lower train.initial_lr."""
    path = _checkpoint_of_a_run(nn_env, monkeypatch, tmp_path, {"num_epochs": 3})
    capsys.readouterr()
    trainer = _continue(nn_env, monkeypatch, tmp_path, str(path), train={"initial_lr": 1e-4})
    assert "lowers train.initial_lr from 0.0003 to 0.0001 for the rest of the run" in capsys.readouterr().out
    assert trainer.initial_lr == 1e-4 and trainer.num_epochs == 3
    trainer.lr_scheduler.step(2)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.5 ** 0.9)  # 1 warm-up epoch, then poly


@pytest.mark.parametrize("sections, named", [
    ({"train": {"initial_lr": 1e-3, "batch_size": 3, "num_epochs": 2}},
     ["train.initial_lr (None -> 0.001)", "train.batch_size", "train.num_epochs (3 -> 2; --c may only extend it)"]),
    ({"model": {"name": "upernet_dinov3_small"}}, ["model.name"]),
    ({"lora": {"enabled": True}}, ["lora.enabled"]),
])
def test_continue_refuses_a_config_that_changes_the_run(nn_env, monkeypatch, tmp_path, sections, named):
    from nnunet_bridge.config import ConfigError

    path = _checkpoint_of_a_run(nn_env, monkeypatch, tmp_path, {"num_epochs": 3})
    with pytest.raises(ConfigError) as refused:
        _continue(nn_env, monkeypatch, tmp_path, str(path), **sections)
    for field in named:
        assert field in str(refused.value)


def test_continue_refuses_a_checkpoint_of_another_model(nn_env, monkeypatch, tmp_path):
    from nnunet_bridge.config import ConfigError

    checkpoint = torch.load(_checkpoint_of_a_run(nn_env, monkeypatch, tmp_path), map_location="cpu",
                            weights_only=False)
    checkpoint["segzoo_arch"]["input_normalization"] = "none"  # same weights' layout, another model
    with pytest.raises(ConfigError, match=r"another model .*input_normalization \('none' -> 'backbone'\)"):
        _continue(nn_env, monkeypatch, tmp_path, checkpoint)


def test_pretrained_weights_from_a_run_with_other_classes(nn_env, monkeypatch, capsys):
    """-pretrained_weights: same zoo model, 4 classes instead of 3 -> everything but the classifier loads."""
    from nnunet_bridge.trainer import PRETRAINED_WEIGHTS_ENV, CheckpointLayoutError, nnUNetTrainerSegZoo

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, nn_env["env"][key])
    _ensure_trained(nn_env)
    source = _fold_dir(nn_env, RGB_ID, 0) / "checkpoint_final.pth"
    monkeypatch.setenv(PRETRAINED_WEIGHTS_ENV, str(source))
    plans, dataset_json = _plans(nn_env, RGB_ID), _dataset_json(nn_env, RGB_ID)
    dataset_json["labels"] = {**dataset_json["labels"], "cup": 3}
    trainer = nnUNetTrainerSegZoo(dict(plans, continue_training=False), CONFIG_NAME, 4, dataset_json,
                                  device=torch.device("cpu"))
    trainer.initialize()
    log = capsys.readouterr().out
    assert "Re-initialised (different number of classes)" in log and "classifier" in log
    own = trainer.network.state_dict()
    weights = torch.load(source, map_location="cpu", weights_only=False)["network_weights"]
    key = next(k for k in weights if "blocks.0.attn.qkv.weight" in k)
    torch.testing.assert_close(own[key], weights[key])
    assert own["model.decode_head.classifier.weight"].shape[0] == 4

    # loading that 3-class checkpoint to continue a 4-class run is an error naming the keys
    with pytest.raises(CheckpointLayoutError, match="classifier"):
        trainer.load_checkpoint(str(source))


def test_unavailable_pretrained_weights_fail_with_the_fix(nn_env, monkeypatch):
    """pretrained: true offline -> an error saying how to train from scratch or use a local file."""
    from nnunet_bridge.trainer import nnUNetTrainerSegZoo

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, nn_env["env"][key])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plans = _plans(nn_env, RGB_ID)
    plans["configurations"][CONFIG_NAME]["segzoo"]["model"]["pretrained"] = True
    trainer = nnUNetTrainerSegZoo(dict(plans, continue_training=False), CONFIG_NAME, 3, _dataset_json(nn_env, RGB_ID),
                                  device=torch.device("cpu"))
    with pytest.raises(RuntimeError, match="model.pretrained: false"):
        trainer.initialize()

    # --c / --val restore every weight from the checkpoint: no download is attempted
    _ensure_trained(nn_env)
    resumed = nnUNetTrainerSegZoo(dict(plans, continue_training=True), CONFIG_NAME, 3,
                                  _dataset_json(nn_env, RGB_ID), device=torch.device("cpu"))
    resumed.load_checkpoint(str(_fold_dir(nn_env, RGB_ID, 0) / "checkpoint_final.pth"))
    assert resumed.current_epoch == 2


@pytest.fixture(scope="session")  # one per worker: xdist may interleave other modules' tests
def exported_fold(nn_env) -> dict:
    """Fold 0 exported once by ``segzoo-nnunet export`` (its ONNX file and the command's output)."""
    pytest.importorskip("onnxruntime", reason="the export extra")
    _ensure_trained(nn_env)
    onnx_file = nn_env["base"] / "export" / "fold0.onnx"
    out = bridge(["export", "-d", str(RGB_ID), "-c", CONFIG_NAME, "-f", "0", "-o", str(onnx_file)], nn_env["env"])
    return {"onnx": onnx_file, "output": out}


def test_a_trained_fold_exports_to_onnx_with_its_deployment_facts(nn_env, exported_fold):
    """segzoo-nnunet export: the network nnU-Net runs (input normalisation included) as ONNX,
    checked against PyTorch with ONNX Runtime, and a JSON of what nnU-Net does around it."""
    import onnxruntime

    assert "checked against the PyTorch network with ONNX Runtime" in exported_fold["output"]
    onnx_file = exported_fold["onnx"]
    facts = json.loads(onnx_file.with_suffix(".json").read_text())
    plans = _plans(nn_env, RGB_ID)["configurations"][CONFIG_NAME]
    assert facts["patch_size"] == plans["patch_size"] and facts["labels"] == _dataset_json(nn_env, RGB_ID)["labels"]
    assert [c["normalization"] for c in facts["channels"]] == ["RGBTo01Normalization"] * 3
    session = onnxruntime.InferenceSession(str(onnx_file))
    patch = np.random.rand(2, 3, *plans["patch_size"]).astype(np.float32)  # an RGB patch scaled to [0, 1]
    logits = session.run(None, {"image": patch})[0]
    assert logits.shape == (2, 3, *plans["patch_size"]) and np.isfinite(logits).all()
    assert facts["inference"]["mirror_axes"] == [0, 1] and facts["crop_to_nonzero"]


def test_onnx_runtime_predictor_reproduces_nnunetv2_predict(nn_env, exported_fold, tmp_path):
    """The exported fold run by nnunet_bridge.onnx_predict (numpy + ONNX Runtime, sliding window with
    mirroring) labels held-out images as stock nnUNetv2_predict does: >= 99.5% of pixels agree, and
    where they differ nnU-Net's own probabilities are a near-tie (float32 noise between ONNX Runtime
    and PyTorch flips a pixel or two of 1681 at margins near zero). Images larger and smaller than
    the patch, with black corners to crop."""
    env = nn_env["env"]
    images = tmp_path / "images"
    images.mkdir()
    for index, size in enumerate((150, 97, 41)):
        image, _ = fundus_case(size, seed=7_000 + index)
        Image.fromarray(image).save(images / f"held_out_{index:03d}_0000.png")
    stock = tmp_path / "stock"
    run(["nnUNetv2_predict", "-i", str(images), "-o", str(stock), "-d", str(RGB_ID), "-c", CONFIG_NAME, "-f", "0",
          "-tr", "nnUNetTrainerSegZoo", "-npp", "1", "-nps", "1", "-device", "cpu", "--save_probabilities"],
        dict(env, nnUNet_extTrainer=EXT_TRAINER_DIR))
    ours = tmp_path / "onnx"
    out = run([sys.executable, "-m", "nnunet_bridge.deploy.onnx_predict", str(exported_fold["onnx"]), "-i", str(images),
                "-o", str(ours)], env)
    assert "[3/3]" in out
    for index, size in enumerate((150, 97, 41)):
        a = np.asarray(Image.open(ours / f"held_out_{index:03d}.png"))
        b = np.asarray(Image.open(stock / f"held_out_{index:03d}.png"))
        assert a.shape == b.shape == (size, size)
        agreement = float((a == b).mean())
        probabilities = np.sort(np.load(stock / f"held_out_{index:03d}.npz")["probabilities"], axis=0)
        margins = (probabilities[-1] - probabilities[-2]).reshape(a.shape)[a != b]
        worst = float(margins.max()) if margins.size else 0.0
        print(f"{size}x{size}: {agreement:.5f} of pixels agree, classes {np.unique(b).tolist()}, "
              f"largest probability margin where they differ: {worst:.4f}")
        assert agreement >= 0.995, f"{size}x{size}: only {agreement:.4%} of pixels agree with nnUNetv2_predict"
        assert worst < 0.01, f"{size}x{size}: a pixel nnUNetv2_predict labels with a margin of {worst:.3f} differs"


def test_checkpoint_path_loads_into_the_trainers_own_model(nn_env, monkeypatch, tmp_path):
    """model.checkpoint_path: the backbone file loads into the network the trainer built (LoRA'd or
    not), checked and reported, with no second model built to copy from."""
    from safetensors.torch import save_file

    from nnunet_bridge.trainer import nnUNetTrainerSegZoo
    from tests.checkpoint_layouts import source_vit

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, nn_env["env"][key])
    _ensure_planned(nn_env)
    source = source_vit("dinov3_small")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "backbone.safetensors"))
    plans = _plans(nn_env, RGB_ID)
    plans["configurations"][CONFIG_NAME]["segzoo"]["model"]["checkpoint_path"] = str(tmp_path / "backbone.safetensors")
    built, create_model = [], segzoo.create_model
    monkeypatch.setattr(segzoo, "create_model", lambda *a, **k: built.append(a) or create_model(*a, **k))
    trainer = nnUNetTrainerSegZoo(dict(plans, continue_training=False), CONFIG_NAME, 4, _dataset_json(nn_env, RGB_ID),
                                  device=torch.device("cpu"))
    trainer.initialize()
    assert len(built) == 1  # the network itself; the weights went into it
    weights = trainer.network.model.backbone.model.state_dict()
    for key, value in source.state_dict().items():
        if key in weights:
            torch.testing.assert_close(weights[key], value, rtol=0, atol=0, msg=key)
    assert "Loaded pretrained backbone weights" in _latest_log(Path(trainer.output_folder))


def test_checkpoints_hold_every_key_nnunets_own_code_reads(nn_env, monkeypatch):
    """The bridge writes checkpoints itself; nnU-Net's own load_checkpoint must still read them."""
    import inspect

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_bridge.trainer import PRETRAINED_WEIGHTS_ENV

    _ensure_trained(nn_env)
    source = _fold_dir(nn_env, RGB_ID, 0) / "checkpoint_final.pth"
    saved = torch.load(source, map_location="cpu", weights_only=False)
    nnunet_reads = set(re.findall(r"checkpoint\[['\"](\w+)['\"]\]", inspect.getsource(nnUNetTrainer.load_checkpoint)))
    nnunet_writes = set(re.findall(r"['\"](\w+)['\"]:", inspect.getsource(nnUNetTrainer.save_checkpoint)))
    assert {"network_weights", "optimizer_state", "current_epoch"} <= nnunet_reads
    assert nnunet_reads | nnunet_writes <= set(saved)

    trainer = _trainer_uninitialised(nn_env, monkeypatch, continue_training=True)
    trainer.initialize()
    nnUNetTrainer.load_checkpoint(trainer, str(source))  # nnU-Net's own code, on our trainer and file
    assert trainer.current_epoch == saved["current_epoch"]
    own = trainer.network.state_dict()
    for key, value in saved["network_weights"].items():
        torch.testing.assert_close(own[key], value)

    # a leftover -pretrained_weights in the environment is not applied when --c restores a run
    monkeypatch.setenv(PRETRAINED_WEIGHTS_ENV, str(nn_env["base"] / "no_such_checkpoint.pth"))
    resumed = _trainer_uninitialised(nn_env, monkeypatch, continue_training=True)
    resumed.load_checkpoint(str(source))  # would fail reading the missing file if it were applied
    assert resumed.current_epoch == saved["current_epoch"]


def test_mask2former_trains_on_a_dataset_with_an_ignore_label(nn_env, monkeypatch):
    """Set heads get nnU-Net's ignore label in their loss: its pixels change nothing."""
    from nnunet_bridge.trainer import nnUNetTrainerSegZoo

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, nn_env["env"][key])
    config = nn_env["base"] / "mask2former.yaml"
    tiny_heads = dict(num_queries=4, decoder_layers=2, encoder_layers=1, num_attention_heads=2,
                      dim_feedforward=32, encoder_feedforward_dim=32, train_num_points=256)
    model = {**TINY_CONFIG["model"], "name": "mask2former_dinov3_small",
             "kwargs": {**TINY_CONFIG["model"]["kwargs"], **tiny_heads}}
    config.write_text(yaml.safe_dump({**TINY_CONFIG, "model": model}))
    bridge(["plan", str(RGB_ID), "--config", str(config)], nn_env["env"])
    dataset_json = _dataset_json(nn_env, RGB_ID)
    dataset_json["labels"] = {**dataset_json["labels"], "ignore": 3}
    trainer = nnUNetTrainerSegZoo(dict(_plans(nn_env, RGB_ID), continue_training=False),
                                  "2d_mask2former_dinov3_small", 0, dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    network = trainer.network.train()
    x = torch.randn(2, 3, 64, 64)
    target = torch.zeros(2, 1, 64, 64)
    target[:, :, 10:30, 5:25] = 1
    target[:, :, :, 32:] = 3  # the ignore label
    outputs = network(x)
    changed = dict(outputs, masks_queries_logits=outputs["masks_queries_logits"].clone())
    changed["masks_queries_logits"][..., 10:] += 20.0  # mask logits that reach ignored pixels only
    changed["auxiliary_outputs"] = [dict(o, masks_queries_logits=o["masks_queries_logits"].clone())
                                    for o in outputs["auxiliary_outputs"]]
    for o in changed["auxiliary_outputs"]:
        o["masks_queries_logits"][..., 10:] += 20.0
    torch.manual_seed(0)
    loss = trainer.loss(outputs, target)
    torch.manual_seed(0)
    assert torch.isfinite(loss) and trainer.loss(changed, target).item() == loss.item()
    loss.backward()


def test_dpt_plans_trains_and_predicts_through_nnunets_own_predictor(nn_env, monkeypatch, tmp_path):
    """Another head by name only: `plan --model dpt_...`, a training step and a checkpoint,
    then nnU-Net's predictor (in process, finding the trainer through nnUNet_extTrainer)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_bridge import EXT_TRAINER_DIR
    from nnunet_bridge.trainer import nnUNetTrainerSegZoo

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, nn_env["env"][key])
    monkeypatch.setenv("nnUNet_extTrainer", EXT_TRAINER_DIR)
    bridge(["plan", str(RGB_ID), "--config", str(nn_env["config"]), "--model", "dpt_dinov3_small"], nn_env["env"])
    name = "2d_dpt_dinov3_small"
    trainer = nnUNetTrainerSegZoo(dict(_plans(nn_env, RGB_ID), continue_training=False), name, 0,
                                  _dataset_json(nn_env, RGB_ID), device=torch.device("cpu"))
    trainer.initialize()
    assert trainer.network.model.model_name == "dpt_dinov3_small"
    assert np.isfinite(trainer.train_step(_batch())["loss"])
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    # what nnU-Net's trainer writes at the start of a full run, and its predictor reads
    model_folder = Path(trainer.output_folder_base)
    (model_folder / "plans.json").write_text(json.dumps(trainer.plans_manager.plans))
    (model_folder / "dataset.json").write_text(json.dumps(trainer.dataset_json))

    predictor = nnUNetPredictor(tile_step_size=1.0, use_mirroring=False, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(0,))
    images = Path(nn_env["env"]["nnUNet_raw"]) / f"Dataset{RGB_ID}_SyntheticFundus" / "imagesTs"
    (tmp_path / "pred").mkdir()  # the sequential path writes its arguments file before creating the folder
    predictor.predict_from_files_sequential(str(images), str(tmp_path / "pred"))
    predictions = sorted((tmp_path / "pred").glob("*.png"))
    assert len(predictions) == 2 and all(np.asarray(Image.open(p)).shape == (64, 64) for p in predictions)


def _trainer_uninitialised(nn_env, monkeypatch, fold: int = 0, continue_training: bool = False):
    from nnunet_bridge.trainer import nnUNetTrainerSegZoo

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, nn_env["env"][key])
    _ensure_planned(nn_env)
    return nnUNetTrainerSegZoo(dict(_plans(nn_env, RGB_ID), continue_training=continue_training), CONFIG_NAME, fold,
                               _dataset_json(nn_env, RGB_ID), device=torch.device("cpu"))


def _trainer(nn_env, monkeypatch, fold: int = 2):
    from nnunet_bridge.trainer import nnUNetTrainerSegZoo

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, nn_env["env"][key])
    _ensure_planned(nn_env)
    torch.manual_seed(0)
    trainer = nnUNetTrainerSegZoo(dict(_plans(nn_env, RGB_ID), continue_training=False), CONFIG_NAME, fold,
                                  _dataset_json(nn_env, RGB_ID), device=torch.device("cpu"))
    trainer.initialize()
    return trainer


def _batch() -> dict:
    generator = torch.Generator().manual_seed(3)
    return {"data": torch.rand(2, 3, 64, 64, generator=generator),
            "target": torch.randint(0, 3, (2, 1, 64, 64), generator=generator).float()}


def test_compile_switch_follows_nnunet(nn_env, monkeypatch):
    from nnunet_bridge.trainer import COMPILE_ENV

    trainer = _trainer(nn_env, monkeypatch)
    assert trainer._do_i_compile() is False  # nnU-Net's whole-network compile never runs
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    assert not trainer.wants_compile()  # CPU: off unless asked
    monkeypatch.setenv(COMPILE_ENV, "t")
    assert trainer.wants_compile()
    trainer.device = torch.device("cuda")  # only the device type is read
    monkeypatch.delenv(COMPILE_ENV)
    assert trainer.wants_compile()  # CUDA: on by default, as in nnU-Net
    monkeypatch.setenv(COMPILE_ENV, "f")
    assert not trainer.wants_compile()


def test_compiled_training_step_matches_eager_and_checkpoints_keep_their_keys(nn_env, monkeypatch, tmp_path):
    eager, compiled = _trainer(nn_env, monkeypatch), _trainer(nn_env, monkeypatch)
    compiled.segzoo_config.train.compile_backend = "aot_eager"
    compiled.compile_network()
    assert segzoo.is_compiled(compiled.network.model)
    for trainer in (eager, compiled):
        for module in trainer.network.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    for _ in range(2):  # the second loss is computed on weights the first AdamW step changed
        expected, got = eager.train_step(_batch()), compiled.train_step(_batch())
        np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-4)
    compiled.save_checkpoint(str(tmp_path / "checkpoint.pth"))
    saved = torch.load(tmp_path / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert list(saved["network_weights"]) == list(eager.network.state_dict())


def test_a_compile_failure_at_the_first_step_falls_back_to_eager_once(nn_env, monkeypatch):
    torch._dynamo.reset()  # no graph compiled by an earlier test may be reused
    trainer = _trainer(nn_env, monkeypatch)
    trainer.segzoo_config.train.compile_backend = _register_failing_backend()
    trainer.compile_network()
    with pytest.warns(RuntimeWarning, match="torch.compile failed at the first training step.*continues eager"):
        first = trainer.train_step(_batch())
    assert np.isfinite(first["loss"]) and not segzoo.is_compiled(trainer.network)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        trainer.train_step(_batch())
    assert "torch.compile failed at the first training step" in _latest_log(Path(trainer.output_folder))


def _register_failing_backend() -> str:
    """A torch.compile backend that fails on the SegFormer head's graph (it has the only ReLU)."""
    from torch._dynamo.backends.registry import register_backend

    name = "segzoo_test_fails_on_relu"
    if name not in torch._dynamo.list_backends(exclude_tags=()):
        def fails_on_relu(gm: torch.fx.GraphModule, example_inputs):
            if any("relu" in str(node.target) for node in gm.graph.nodes):
                raise RuntimeError("backend failure for the test")
            return gm.forward

        register_backend(fails_on_relu, name=name)
    return name


def test_unknown_compile_backend_is_named(nn_env, monkeypatch):
    from nnunet_bridge.config import ConfigError

    trainer = _trainer(nn_env, monkeypatch)
    trainer.segzoo_config.train.compile_backend = "inductr"
    with pytest.raises(ConfigError, match="'inductr' is not a torch.compile backend.*inductor"):
        trainer.compile_network()


def test_one_channel_dataset_through_the_seed_entry_point(nn_env):
    train_env = nn_env["train_env"]
    run([sys.executable, str(ROOT / "nnUNetv2_train_segformer.py"), str(GREY_ID), "2d", "0",
          "--segformer_config", str(nn_env["config"]), "-device", "cpu"], train_env)
    conf = _plans(nn_env, GREY_ID)["configurations"][CONFIG_NAME]
    assert conf["architecture"]["arch_kwargs"]["input_normalization"] == "none"  # nnU-Net z-scores it
    fold = _fold_dir(nn_env, GREY_ID, 0, dataset_name="SyntheticGrey")
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    patch_embed = next(v for k, v in final["network_weights"].items() if k.endswith("patch_embed.proj.weight"))
    assert patch_embed.shape[1] == 1
    assert (fold / "validation" / "summary.json").is_file()


# -- helpers ---------------------------------------------------------------------------


def _ensure_trained(nn_env) -> None:
    _ensure_planned(nn_env)
    if not (_fold_dir(nn_env, RGB_ID, 0) / "checkpoint_final.pth").is_file():
        bridge(["train", str(RGB_ID), CONFIG_NAME, "0", "-device", "cpu"], nn_env["train_env"])


def _ensure_planned(nn_env) -> None:
    if CONFIG_NAME not in _plans(nn_env, RGB_ID)["configurations"]:
        bridge(["plan", str(RGB_ID), "--config", str(nn_env["config"])], nn_env["env"])


def _plans(nn_env, dataset_id: int) -> dict:
    folder = next(Path(nn_env["env"]["nnUNet_preprocessed"]).glob(f"Dataset{dataset_id}_*"))
    return json.loads((folder / "nnUNetPlans.json").read_text())


def _dataset_json(nn_env, dataset_id: int) -> dict:
    folder = next(Path(nn_env["env"]["nnUNet_preprocessed"]).glob(f"Dataset{dataset_id}_*"))
    return json.loads((folder / "dataset.json").read_text())


def _fold_dir(nn_env, dataset_id: int, fold: int, dataset_name: str = "SyntheticFundus") -> Path:
    return (Path(nn_env["env"]["nnUNet_results"]) / f"Dataset{dataset_id}_{dataset_name}"
            / f"nnUNetTrainerSegZoo__nnUNetPlans__{CONFIG_NAME}" / f"fold_{fold}")


def _latest_log(fold: Path) -> str:
    return max(fold.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime_ns).read_text()


def _epochs_logged(log: str) -> list[int]:
    return [int(m) for m in re.findall(r": Epoch (\d+) ", log)]


def test_eomt_trains_with_its_own_loss_and_anneals_its_masks_by_epoch(nn_env, monkeypatch):
    """The trainer's epoch count drives EoMT's masked-attention annealing; the set loss trains it."""
    from nnunet_bridge.trainer import nnUNetTrainerSegZoo
    from tests.tiny_models import TINY_EOMT

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, nn_env["env"][key])
    config = nn_env["base"] / "eomt.yaml"
    model = {"name": "eomt_dinov3_small", "pretrained": False, "kwargs": dict(TINY_EOMT)}
    config.write_text(yaml.safe_dump({**TINY_CONFIG, "model": model}))
    bridge(["plan", str(RGB_ID), "--config", str(config)], nn_env["env"])
    trainer = nnUNetTrainerSegZoo(dict(_plans(nn_env, RGB_ID), continue_training=False), "2d_eomt_dinov3_small", 3,
                                  _dataset_json(nn_env, RGB_ID), device=torch.device("cpu"))
    trainer.initialize()
    eomt = trainer.bare_network().model
    assert trainer.num_epochs == 2 and eomt.mask_probabilities == [1.0, 1.0]
    trainer.current_epoch = 1  # half-way: 2 query blocks anneal over [1/4, 2/4] and [2/4, 3/4]
    trainer.on_train_epoch_start()
    assert eomt.mask_probabilities == [0.0, 1.0] and eomt.training
    loss = trainer.train_step(_batch())["loss"]
    assert np.isfinite(loss)
    trainer.network.eval()
    with torch.no_grad():
        assert trainer.network(_batch()["data"]).shape == (2, 3, 64, 64)  # per pixel, for nnU-Net's validation


def test_a_training_loss_that_stays_nan_stops_the_run_and_keeps_the_last_good_checkpoint(nn_env, monkeypatch):
    """One NaN pixel makes the loss NaN (and, through the gradients, the weights): after three such
    steps training stops with where and why, and checkpoint_latest.pth stays the one from before."""
    from nnunet_bridge.training.divergence import TrainingDivergedError

    trainer = _trainer(nn_env, monkeypatch, fold=1)
    latest = Path(trainer.output_folder) / "checkpoint_latest.pth"
    trainer.current_epoch = 0
    trainer.on_train_epoch_start()
    assert np.isfinite(trainer.train_step(_batch())["loss"])
    trainer.save_checkpoint(str(latest))
    good = latest.read_bytes()
    poisoned = _batch()
    poisoned["data"][0, 1, 10, 20] = float("nan")
    trainer.train_step(poisoned)  # the NaN pixel
    trainer.save_checkpoint(str(latest))  # an epoch ending here must not overwrite the good state
    trainer.save_checkpoint(str(Path(trainer.output_folder) / "checkpoint_best.pth"))
    trainer.current_epoch = 1
    trainer.on_train_epoch_start()
    assert not np.isfinite(trainer.train_step(_batch())["loss"])  # NaN weights now: clean data stays NaN
    with pytest.raises(TrainingDivergedError, match=(
            r"not finite for 3 consecutive steps \(nan, nan, nan\), from epoch 0 iteration 1 to epoch 1 iteration 1\. "
            r"Likely causes: a learning rate too high \(train\.initial_lr\), input images with NaN or Inf values\. "
            r".*checkpoint_latest\.pth is kept from before the divergence \(after epoch 0\)\. To go on from there "
            r"with a lower learning rate: train the fold again with --c and a --config YAML that sets a lower "
            r"train\.initial_lr")):
        trainer.train_step(_batch())
    assert latest.read_bytes() == good and not (Path(trainer.output_folder) / "checkpoint_best.pth").exists()
    saved = torch.load(latest, map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in saved["network_weights"].values() if v.is_floating_point())
    assert "training diverged" in _latest_log(Path(trainer.output_folder))


def test_predict_names_input_cases_with_nan_or_inf(nn_env, tmp_path):
    """Read with the dataset's own nnU-Net reader (SimpleITK and .mha here: PNG cannot hold NaN)."""
    import SimpleITK as sitk

    from nnunet_bridge.input_check import NonFiniteInputError, check_inputs_finite

    model = tmp_path / "model"
    model.mkdir()
    plans = _plans(nn_env, RGB_ID)
    (model / "plans.json").write_text(json.dumps(dict(plans, image_reader_writer="SimpleITKIO")))
    (model / "dataset.json").write_text(json.dumps(dict(_dataset_json(nn_env, RGB_ID), file_ending=".mha")))
    images = tmp_path / "imagesTs"
    images.mkdir()
    for case in ("clean", "has_nan", "has_inf"):
        for channel in range(2):
            array = np.ones((1, 8, 8), dtype=np.float32)
            if channel == 1 and case != "clean":
                array[0, 2, 3] = np.nan if case == "has_nan" else np.inf
            sitk.WriteImage(sitk.GetImageFromArray(array), str(images / f"{case}_{channel:04d}.mha"))
    with pytest.raises(NonFiniteInputError, match=(
            r"^2 input case\(s\) in .*imagesTs contain NaN or Inf values.*: has_inf \(1 Inf in has_inf_0001\.mha\), "
            r"has_nan \(1 NaN in has_nan_0001\.mha\)\. Replace those values")):
        check_inputs_finite(str(images), str(model))
    for case in ("has_nan", "has_inf"):
        for channel in range(2):
            (images / f"{case}_{channel:04d}.mha").unlink()
    check_inputs_finite(str(images), str(model))  # clean inputs pass


def test_resume_and_pretrained_weights_refuse_a_checkpoint_that_runs_code(nn_env, monkeypatch, tmp_path):
    """``--c`` (nnU-Net's run_training calls load_checkpoint) and ``-pretrained_weights`` (read in
    initialize) with a real bridge checkpoint whose pickle would touch a marker file (see
    test_checkpoint_safety.py for the commands)."""
    from segzoo import UnsafeCheckpointError

    from nnunet_bridge.checkpoint_files import TRUST_ENV
    from nnunet_bridge.trainer import PRETRAINED_WEIGHTS_ENV
    from tests.test_checkpoint_safety import _hostile

    refused = r"needs builtins\.getattr, pathlib\.Path, pathlib\.PosixPath, .*--trust-checkpoint"
    monkeypatch.delenv(TRUST_ENV, raising=False)
    marker = tmp_path / "code_ran"
    source = tmp_path / "own.pth"
    _trainer(nn_env, monkeypatch).save_checkpoint(str(source))
    hostile = _hostile(tmp_path / "hostile.pth", marker, torch.load(source, weights_only=True))
    resumed = _trainer_uninitialised(nn_env, monkeypatch, fold=2, continue_training=True)
    with pytest.raises(UnsafeCheckpointError, match=refused):
        resumed.load_checkpoint(str(hostile))
    monkeypatch.setenv(PRETRAINED_WEIGHTS_ENV, str(hostile))
    started = _trainer_uninitialised(nn_env, monkeypatch, fold=2)
    with pytest.raises(UnsafeCheckpointError, match=refused):
        started.initialize()
    assert not marker.exists()


def test_bridge_checkpoints_load_weights_only_and_stock_ones_still_load(nn_env, monkeypatch, tmp_path):
    """Logs hold numpy scalars during training (nnU-Net's np.mean); the bridge writes Python floats.
    A stock nnU-Net checkpoint keeps numpy scalars: the allow-list still reads it for --c."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    trainer = _trainer(nn_env, monkeypatch)
    for key, value in (("train_losses", np.float64(0.5)), ("val_losses", np.float32(0.4)),
                       ("mean_fg_dice", np.float64(0.3)), ("ema_fg_dice", np.float64(0.3)),
                       ("dice_per_class_or_region", [np.float64(0.2), np.float64(0.4)]), ("lrs", 1e-3),
                       ("epoch_start_timestamps", 1.0), ("epoch_end_timestamps", 2.0)):
        trainer.logger.log(key, value, 0)
    trainer._best_ema = np.float64(0.3)
    own = tmp_path / "own.pth"
    trainer.save_checkpoint(str(own))
    saved = torch.load(own, map_location="cpu", weights_only=True)  # plain: no allow-list needed
    assert saved["logging"]["dice_per_class_or_region"] == [[0.2, 0.4]] and type(saved["_best_ema"]) is float

    stock = dict(saved, _best_ema=np.float64(0.3), logging=trainer.logger.get_checkpoint())  # as nnU-Net saves
    torch.save(stock, tmp_path / "stock.pth")
    resumed = _trainer_uninitialised(nn_env, monkeypatch, fold=2, continue_training=True)
    resumed.load_checkpoint(str(tmp_path / "stock.pth"))
    assert resumed.current_epoch == saved["current_epoch"] and resumed._best_ema == 0.3

    # nnU-Net's own load_checkpoint reads the bridge's file (plain floats in its logs)
    stock_reader = _trainer_uninitialised(nn_env, monkeypatch, fold=2, continue_training=True)
    stock_reader.initialize()
    nnUNetTrainer.load_checkpoint(stock_reader, str(own))
    assert stock_reader.logger.get_checkpoint()["mean_fg_dice"] == [0.3]
