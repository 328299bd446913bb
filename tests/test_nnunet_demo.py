"""`segzoo-nnunet demo`, from scratch at toy settings and ``--pretrained`` against the local Hub
stand-in (tests/hub_server.py): the download, the load into the model and the fine-tuning of
the served weights, then both models' Dice, the picture and the comparison report."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import segzoo
from nnunet_bridge.checkpoint_files import load_checkpoint_file
from nnunet_bridge.cli import main
from tests.checkpoint_layouts import source_vit
from tests.hub_server import LocalHub
from tests.nnunet_runs import ROOT
from tests.tiny_models import tiny_kwargs

RESULTS = Path("nnUNet_results") / "Dataset999_SyntheticFundus"
UNET_RUN = "nnUNetTrainer__nnUNetPlans__2d"
TOY = ["--epochs", "1", "--iterations", "2", "--cases", "5", "--size", "64"]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(PYTHONPATH=str(ROOT), nnUNet_def_n_proc="1", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    env.update(extra)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        env.pop(key, None)  # the demo keeps its nnU-Net folders under --out
    return env


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return output


def _check_reports(out: Path, output: str, zoo_run: str, zoo_label: str) -> None:
    """Both models' held-out Dice printed, the comparison read back from fold 0's summaries, the picture."""
    assert re.search(rf"{re.escape(zoo_label)}\s+nnU-Net 2d U-Net", output), output[-3000:]
    assert re.search(r"vessel\s+\d\.\d{3}\s+\d\.\d{3}", output)
    assert re.search(r"optic_disc\s+\d\.\d{3}\s+\d\.\d{3}", output)
    rows = {r["run"]: r for r in csv.DictReader((out / "comparison" / "comparison.csv").open())
            if r["class"] == "foreground mean"}
    for run_name in (UNET_RUN, zoo_run):
        summary = json.loads((out / RESULTS / run_name / "fold_0" / "validation" / "summary.json").read_text())
        assert float(rows[run_name]["fold_0"]) == pytest.approx(summary["foreground_mean"]["Dice"])
    assert "Paired differences in foreground-mean Dice against nnUNetTrainer 2d" in output
    assert (out / "comparison" / "comparison.png").is_file()
    figure = Image.open(out / "demo_predictions.png")
    # 4 cases x (image, truth, prediction) at zoom 2, plus a title band and a Dice line
    assert figure.size == (64 * 3 * 2, 64 * 4 * 2 + 24 + 24)
    assert (np.asarray(figure.convert("L"))[:24] < 128).any()  # the column titles are drawn
    assert len(list((out / "predictions").glob("*.png"))) == 6


def test_demo_runs_end_to_end_small(tmp_path):
    """`segzoo-nnunet demo` at toy settings: the from-scratch patch-8 ViT and nnU-Net's U-Net trained,
    both models' Dice per class printed, the side-by-side PNG and the comparison report written."""
    output = _run([sys.executable, "-m", "nnunet_bridge.cli", "demo", "--out", str(tmp_path), *TOY],
                  _demo_env(), tmp_path)
    zoo_run = "nnUNetTrainerSegZoo__nnUNetPlans__2d_segformer_dinov3_small"
    _check_reports(tmp_path, output, zoo_run, "2d_segformer_dinov3_small (random init)")
    assert "Training from random initialisation" in (tmp_path / RESULTS / zoo_run / "fold_0").joinpath(
        next(p.name for p in (tmp_path / RESULTS / zoo_run / "fold_0").glob("training_log_*.txt"))).read_text()
    assert "[segzoo demo 7/7]" in output and "--pretrained" in output  # says what random weights cannot show
    # the model it trained: 8-pixel patches (a 16x16 token grid at 128 px), not the published ViT-S/16
    plans = json.loads((tmp_path / "nnUNet_preprocessed" / "Dataset999_SyntheticFundus" / "nnUNetPlans.json").read_text())
    kwargs = plans["configurations"]["2d_segformer_dinov3_small"]["architecture"]["arch_kwargs"]
    assert json.dumps(kwargs).count('"patch_size": 8') == 1, kwargs


def test_demo_pretrained_downloads_from_the_hub_and_fine_tunes_those_weights(tmp_path):
    """`segzoo-nnunet demo --pretrained --model NAME` against the Hub stand-in serving tiny DINOv3-S
    weights: the file is downloaded, loaded with nothing missing, and fine-tuned; the trained
    backbone is the served one moved by a few Adam steps at lr 1e-4, where a random initialisation
    is far from it."""
    served = {k: v.contiguous() for k, v in source_vit("dinov3_small").state_dict().items()}
    save_file(served, str(tmp_path / "served.safetensors"))
    model = "upernet_dinov3_small.lvd1689m"  # not the default model: --model is what trains
    sizes = tiny_kwargs(model)  # the demo's full-size ViT-S, shrunk to the served file's size
    out = tmp_path / "out"
    # the CLI's call of run_demo, with the tiny sizes added (run_demo's model_kwargs)
    runner = ("import functools, json, sys\n"
              "from nnunet_bridge.demo import pipeline\n"
              "pipeline.run_demo = functools.partial(pipeline.run_demo, model_kwargs=json.loads(sys.argv[1]))\n"
              "from nnunet_bridge.cli import main\n"
              "sys.exit(main(sys.argv[2:]))\n")
    with LocalHub() as hub:
        hub.add_file("timm/vit_small_patch16_dinov3.lvd1689m", "model.safetensors",
                     (tmp_path / "served.safetensors").read_bytes())
        env = _demo_env(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="0")
        output = _run([sys.executable, "-c", runner, json.dumps(sizes), "demo", "--pretrained", "--model", model,
                       "--out", str(out), *TOY], env, tmp_path)
        downloads = hub.requests("GET", "/timm/vit_small_patch16_dinov3.lvd1689m/resolve/")
    assert downloads == ["/timm/vit_small_patch16_dinov3.lvd1689m/resolve/main/model.safetensors"]
    assert "[segzoo demo 1/8] downloading the published backbone weights of upernet_dinov3_small.lvd1689m" in output
    assert re.search(r"segzoo: loaded \S+ \(timm\): \d+ tensors loaded, 0 missing, 0 unexpected", output), output[-3000:]
    zoo_run = "nnUNetTrainerSegZoo__nnUNetPlans__2d_upernet_dinov3_small"
    fold = out / RESULTS / zoo_run / "fold_0"
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "Loaded pretrained backbone weights of upernet_dinov3_small.lvd1689m (from the Hub)" in log
    _check_reports(out, output, zoo_run, "2d_upernet_dinov3_small (pretrained)")

    weights = load_checkpoint_file(fold / "checkpoint_final.pth")["network_weights"]
    prefix = "model.backbone.model."
    trained = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    assert trained and set(trained) <= set(served)
    assert set(served) - set(trained) <= {"norm.weight", "norm.bias"}  # the final norm is pruned, unused
    # 2 iterations at lr <= 1e-4: Adam moves a weight by about lr per step
    assert max((trained[k] - served[k]).abs().max().item() for k in trained) < 1e-2
    torch.manual_seed(0)
    fresh = segzoo.create_model(model.split(".")[0], num_classes=3, **sizes).backbone.model.state_dict()
    assert max((fresh[k] - served[k]).abs().max().item() for k in trained) > 0.1  # the check could fail


def test_demo_refuses_model_without_pretrained_and_unknown_names_before_any_work(tmp_path, capsys):
    assert main(["demo", "--model", "segformer_dinov3_small", "--out", str(tmp_path / "a")]) == 2
    assert "--model names the pretrained model to fine-tune: add --pretrained" in capsys.readouterr().err
    assert main(["demo", "--pretrained", "--model", "segformer_dinov3_smal", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "Unknown model 'segformer_dinov3_smal'" in err and "segformer_dinov3_small" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written
