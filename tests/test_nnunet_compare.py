"""Volumes through the 2d configuration, and `segzoo-nnunet compare` on the runs that makes.

One module fixture writes small synthetic CT volumes (channel ``CT``) and another set named
``zscore``, plans and preprocesses ``2d``, adds the zoo configuration to both, and trains
fold 0 of a tiny zoo model on both and of nnU-Net's own 2d U-Net (nnUNetTrainer, same short
budget) on the CT dataset. The tests then predict volumes with both predict commands and with
the exported ONNX fold, and compare the runs, checking every number against the summary.json
files nnU-Net wrote.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nnunet_bridge.demo.synthetic_volumes import VOLUME_SPACING, write_ct_dataset
from nnunet_bridge import EXT_TRAINER_DIR
from tests.nnunet_runs import bridge, nnunet_env, run
from tests.tiny_models import TINY_VIT

CT_ID, ZSCORE_ID = 980, 981
CT_NAME, ZSCORE_NAME = "Dataset980_SyntheticCT", "Dataset981_SyntheticMR"
ZOO = "2d_segformer_dinov3_small"
ZOO_RUN, UNET_RUN = f"nnUNetTrainerSegZoo__nnUNetPlans__{ZOO}", "nnUNetTrainer__nnUNetPlans__2d"
SHAPE = (8, 64, 64)
EPOCHS, ITERATIONS = 1, 2
TINY_CONFIG = {
    "model": {"name": "segformer_dinov3_small", "pretrained": False, "decoder_hidden_size": 32,
              "kwargs": {"backbone_kwargs": dict(TINY_VIT)}},
    "lora": {"enabled": False},
    "train": {"num_epochs": EPOCHS, "num_iterations_per_epoch": ITERATIONS, "num_val_iterations_per_epoch": 1,
              "warmup_epochs": 0, "save_every": 1},
}

TRAIN_SCRIPT = """
import torch
from nnunetv2.run.run_training import run_training
from nnunet_bridge import ensure_ext_trainer_path
from nnunet_bridge.demo.baseline import train_nnunet_baseline
from nnunet_bridge.config import load_config
from nnunet_bridge.plans import plan
ensure_ext_trainer_path()
for dataset in ({ct}, {zscore}):
    assert plan(dataset, load_config({config})) == {zoo!r}
for dataset in ({ct}, {zscore}):
    run_training(str(dataset), {zoo!r}, 0, "nnUNetTrainerSegZoo", device=torch.device("cpu"))
train_nnunet_baseline({ct}, 0, {epochs}, {iterations}, 1)
""".replace("{ct}", str(CT_ID)).replace("{zscore}", str(ZSCORE_ID)).replace("{zoo!r}", repr(ZOO))

# one worker runs this module: its tests share the module fixture's nnU-Net folders
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.xdist_group("nnunet_volumes")]


@pytest.fixture(scope="session")  # one per worker: xdist may interleave other modules' tests
def runs():
    """nnU-Net folders with the two volume datasets preprocessed and fold 0 trained."""
    base = Path(tempfile.mkdtemp(prefix="segzoo_nnunet_volumes_"))  # private: not pruned by other pytest runs
    try:
        yield _train(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _train(base: Path) -> dict:
    env = nnunet_env(base)
    write_ct_dataset(env["nnUNet_raw"], CT_ID, num_train=6, num_test=1, shape=SHAPE, normalization="CT")
    write_ct_dataset(env["nnUNet_raw"], ZSCORE_ID, name="SyntheticMR", num_train=6, num_test=1, shape=SHAPE,
                     normalization="zscore", seed=1)
    run(["nnUNetv2_plan_and_preprocess", "-d", str(CT_ID), str(ZSCORE_ID), "-c", "2d", "-np", "1", "-npfp", "1"],
         env)
    # one process plans both datasets and trains both models: a Python start costs more than the training
    train_env = dict(env, nnUNet_n_proc_DA="0")  # augment in-process
    run([sys.executable, "-c", TRAIN_SCRIPT.format(config=TINY_CONFIG, epochs=EPOCHS, iterations=ITERATIONS)],
         train_env)
    return {"env": env, "base": base, "results": Path(env["nnUNet_results"])}


# -- volumes through the 2d configuration ----------------------------------------------


def test_ct_and_zscore_volumes_plan_a_one_channel_zoo_model_without_backbone_normalisation(runs):
    for name, scheme in ((CT_NAME, "CTNormalization"), (ZSCORE_NAME, "ZScoreNormalization")):
        plans = json.loads((Path(runs["env"]["nnUNet_preprocessed"]) / name / "nnUNetPlans.json").read_text())
        assert plans["configurations"]["2d"]["normalization_schemes"] == [scheme]
        zoo = plans["configurations"][ZOO]
        # nnU-Net already standardises CT and z-scored channels: the backbone's RGB mean/std must not follow
        assert zoo["architecture"]["arch_kwargs"]["input_normalization"] == "none"
        assert len(zoo["patch_size"]) == 2  # slices of the volumes

    fold = runs["results"] / CT_NAME / ZOO_RUN / "fold_0"
    patch_embed = next(v for k, v in _checkpoint_weights(fold).items() if k.endswith("patch_embed.proj.weight"))
    assert patch_embed.shape[1] == 1
    # validation predicted whole volumes in the raw images' geometry
    predictions = sorted((fold / "validation").glob("*.nii.gz"))
    assert predictions
    for prediction in predictions:
        raw = Path(runs["env"]["nnUNet_raw"]) / CT_NAME / "imagesTr" / prediction.name.replace(".nii.gz", "_0000.nii.gz")
        assert _geometry(prediction) == _geometry(raw) == (SHAPE[::-1], tuple(reversed(VOLUME_SPACING)))


def test_volumes_predicted_by_both_commands_are_identical(runs):
    env, base = runs["env"], runs["base"]
    images = Path(env["nnUNet_raw"]) / CT_NAME / "imagesTs"
    ours, stock = base / "pred_ours", base / "pred_stock"
    common = ["-i", str(images), "-d", str(CT_ID), "-c", ZOO, "-f", "0", "-npp", "0", "-nps", "0",  # sequential: no worker processes
              "--save_probabilities", "-device", "cpu"]
    bridge(["predict", "-o", str(ours), *common], env)
    run(["nnUNetv2_predict", "-o", str(stock), *common, "-tr", "nnUNetTrainerSegZoo"], dict(env, nnUNet_extTrainer=EXT_TRAINER_DIR))
    [case] = sorted(p.name for p in images.glob("*.nii.gz"))
    name = case.replace("_0000.nii.gz", ".nii.gz")
    assert _geometry(ours / name) == _geometry(images / case) == (SHAPE[::-1], tuple(reversed(VOLUME_SPACING)))
    assert np.array_equal(_voxels(ours / name), _voxels(stock / name))
    npz = name.replace(".nii.gz", ".npz")
    probabilities = np.load(ours / npz)["probabilities"]
    assert probabilities.shape == (3, *SHAPE)  # classes x the whole volume, not one slice
    np.testing.assert_array_equal(probabilities, np.load(stock / npz)["probabilities"])


@pytest.mark.parametrize("dataset_name", [CT_NAME, ZSCORE_NAME], ids=["CT", "zscore"])
def test_onnx_fold_predictor_labels_volumes_as_nnunetv2_predict(runs, dataset_name, tmp_path, monkeypatch):
    """The exported fold, run slice by slice by OnnxFoldPredictor (CT or z-score normalisation, sliding
    window, mirroring), labels a held-out volume as stock nnUNetv2_predict does, with every class present.

    A 2-step training predicts background almost everywhere, which would hide a wrong label order or
    a mirrored class map, so both predictors run a copy of the fold whose classifier is rewritten
    to give each class about a third of the test volume (see _spread_classes)."""
    pytest.importorskip("onnxruntime", reason="the export extra")
    from nnunet_bridge.deploy.onnx_predict import OnnxFoldPredictor

    dataset_id = dataset_name[len("Dataset"):].split("_")[0]
    env = dict(runs["env"], nnUNet_results=str(tmp_path / "results"))
    run_folder = Path(env["nnUNet_results"]) / dataset_name / ZOO_RUN
    shutil.copytree(runs["results"] / dataset_name / ZOO_RUN, run_folder)
    images = Path(env["nnUNet_raw"]) / dataset_name / "imagesTs"
    monkeypatch.setenv("nnUNet_extTrainer", EXT_TRAINER_DIR)  # nnU-Net's in-process predictor finds the trainer
    _spread_classes(run_folder, images, tmp_path / "calibration")
    stock = tmp_path / "stock"
    run(["nnUNetv2_predict", "-i", str(images), "-o", str(stock), "-d", dataset_id, "-c", ZOO, "-f", "0",
         "-tr", "nnUNetTrainerSegZoo", "-npp", "0", "-nps", "0", "-device", "cpu", "--save_probabilities"],
        dict(env, nnUNet_extTrainer=EXT_TRAINER_DIR))
    onnx_file = tmp_path / "fold0.onnx"
    bridge(["export", "-d", dataset_id, "-c", ZOO, "-f", "0", "-o", str(onnx_file)], env)
    predictor = OnnxFoldPredictor(onnx_file)
    assert predictor.facts["inference"]["mirror_axes"], "the volumes' 2d plan should mirror in-plane"
    labels = sorted(int(v) for v in json.loads((Path(env["nnUNet_raw"]) / dataset_name / "dataset.json")
                                               .read_text())["labels"].values())
    [case] = sorted(images.glob("*_0000.nii.gz"))
    volume = _voxels(case)
    spacing = tuple(reversed(_spacing(case)))  # SimpleITK gives (x, y, z); the array is (z, y, x)
    ours = predictor.predict(volume[None].astype(np.float32), spacing=spacing)
    want = _voxels(stock / case.name.replace("_0000.nii.gz", ".nii.gz"))
    assert ours.shape == want.shape == volume.shape
    assert sorted(np.unique(want).tolist()) == labels, f"nnUNetv2_predict gave classes {np.unique(want).tolist()}"
    agreement = float((ours == want).mean())
    shares = np.bincount(want.ravel(), minlength=len(labels)) / want.size
    # float32 noise (ONNX Runtime vs PyTorch, nnU-Net's float64 resampling) may only flip near-ties
    probabilities = np.sort(np.load(stock / case.name.replace("_0000.nii.gz", ".npz"))["probabilities"], axis=0)
    margins = (probabilities[-1] - probabilities[-2])[ours != want]
    worst = float(margins.max()) if margins.size else 0.0
    print(f"{dataset_name}: {agreement:.5f} of voxels agree; class shares {np.round(shares, 3).tolist()}; "
          f"largest probability margin where they differ: {worst:.4f}")
    assert agreement >= 0.995, f"only {agreement:.4%} of voxels agree with nnUNetv2_predict"
    assert worst < 0.01, f"a voxel nnUNetv2_predict labels with a probability margin of {worst:.3f} differs"


# -- compare ---------------------------------------------------------------------------


def test_compare_reports_the_numbers_of_the_summary_files(runs, tmp_path):
    env, results = runs["env"], runs["results"] / CT_NAME
    out = bridge(["compare", str(CT_ID), ZOO, "2d", "--folds", "0", "1", "-o", str(tmp_path)], env)
    summaries = {run: json.loads((results / run / "fold_0" / "validation" / "summary.json").read_text())
                 for run in (UNET_RUN, ZOO_RUN)}
    rows = list(csv.DictReader((tmp_path / "comparison.csv").open()))
    assert [r["run"] for r in rows[:2]] == [UNET_RUN, ZOO_RUN]  # the reference (nnU-Net's 2d U-Net) first
    label_ids = {"foreground mean": None, "liver": "1", "kidney": "2"}
    assert {r["class"] for r in rows} == set(label_ids)
    for row in rows:
        summary = summaries[row["run"]]
        key = label_ids[row["class"]]
        expected = summary["foreground_mean"]["Dice"] if key is None else summary["mean"][key]["Dice"]
        assert float(row["fold_0"]) == pytest.approx(expected, abs=1e-12)
        assert row["fold_1"] == "" and row["folds_validated"] == "1" and float(row["mean"]) == float(row["fold_0"])

    paired = next(csv.DictReader((tmp_path / "paired_differences.csv").open()))
    assert (paired["run"], paired["reference"], paired["class"]) == (ZOO_RUN, UNET_RUN, "foreground mean")
    expected = summaries[ZOO_RUN]["foreground_mean"]["Dice"] - summaries[UNET_RUN]["foreground_mean"]["Dice"]
    assert float(paired["fold_0"]) == pytest.approx(expected) and paired["folds"] == "1"

    unet = f"{summaries[UNET_RUN]['foreground_mean']['Dice']:.3f}"
    assert unet in out and "nnUNetTrainer 2d" in out and ZOO in out
    assert "nnUNetTrainer 2d, fold 1: not trained (no fold_1 folder)" in out  # a missing fold is named
    assert "One fold gives one number per configuration" in out
    report = (tmp_path / "comparison.md").read_text()
    assert "## Paired differences against nnUNetTrainer 2d" in report and "![comparison](comparison.png)" in report
    assert f"{ZOO}, fold 1: not trained" in report
    # training cost: the epochs logged and the parameters of each network
    for run_folder in (UNET_RUN, ZOO_RUN):
        parameters = _network_parameters(results / run_folder)  # the network built from its plans
        assert f"{EPOCHS} epochs per fold" in out and f"{parameters / 1e6:.2f} M parameters" in out
    figure = Image.open(tmp_path / "comparison.png")
    assert figure.size[0] > 800 and figure.size[1] > 600


LEGEND_SCRIPT = """
import json
import numpy as np
from nnunet_bridge.report.compare import gather
from nnunet_bridge.report.compare_plot import comparison_figure
figure = comparison_figure(gather({ct}, [{zoo!r}, "2d"], folds=[0]))
case_row = figure.subfigs[1]
legend, = case_row.legends
truth = case_row.axes[1].images[0].get_array().reshape(-1, 3)
print(json.dumps({{"title": legend.get_title().get_text(), "texts": [t.get_text() for t in legend.get_texts()],
                  "colours": [list(h.get_facecolor()[:3]) for h in legend.legend_handles],
                  "truth_panel": case_row.axes[1].get_title(),
                  "truth_colours": np.unique(truth, axis=0).tolist()}}))
"""


def test_compare_figure_has_a_legend_for_the_label_colours(runs):
    """The case row's legend names every label value in the colour its truth and prediction panels use."""
    out = run([sys.executable, "-c", LEGEND_SCRIPT.format(ct=CT_ID, zoo=ZOO)], runs["env"])
    drawn = json.loads(out.strip().splitlines()[-1])
    labels = json.loads((Path(runs["env"]["nnUNet_raw"]) / CT_NAME / "dataset.json").read_text())["labels"]
    assert drawn["texts"] == [f"{value}: {name}" for name, value in sorted(labels.items(), key=lambda i: i[1])]
    assert drawn["texts"][1:] == ["1: liver", "2: kidney"] and "label colours" in drawn["title"]
    assert drawn["truth_panel"] == "truth"
    # each colour in the truth panel is one of the legend's, and every label in the truth has its own
    legend_colours = [tuple(np.round(c, 6)) for c in drawn["colours"]]
    truth_colours = {tuple(np.round(c, 6)) for c in drawn["truth_colours"]}
    assert len(set(legend_colours)) == len(legend_colours) and truth_colours == set(legend_colours)


def test_compare_names_missing_unfinished_and_unvalidated_folds(runs, tmp_path, monkeypatch):
    """On-disk states of real runs: fold 1 a copy of fold 0 mid-training (no final checkpoint,
    no validation), fold 2 trained but never validated, fold 3 never started."""
    from nnunet_bridge.report.compare import FOREGROUND, gather, paired_differences
    from nnunet_bridge.report.compare_report import format_markdown, write_report

    results = tmp_path / "results"
    shutil.copytree(runs["results"] / CT_NAME, results / CT_NAME)
    zoo = results / CT_NAME / ZOO_RUN
    shutil.copytree(zoo / "fold_0", zoo / "fold_1")
    (zoo / "fold_1" / "checkpoint_final.pth").unlink()
    shutil.rmtree(zoo / "fold_1" / "validation")
    for log in (zoo / "fold_1").glob("training_log_*.txt"):  # an epoch in progress: no "Training done." yet
        log.write_text(log.read_text().split("Training done.")[0])
    shutil.copytree(zoo / "fold_0", zoo / "fold_2")
    (zoo / "fold_2" / "validation" / "summary.json").unlink()

    monkeypatch.setenv("nnUNet_raw", runs["env"]["nnUNet_raw"])
    comparison = gather(CT_NAME, folds=[0, 1, 2, 3], results_folder=results)
    assert [r.name for r in comparison.runs] == [UNET_RUN, ZOO_RUN]  # every run of the dataset, reference first
    statuses = {f.fold: f.status for f in comparison.runs[1].folds}
    assert statuses == {0: "ok", 1: "training", 2: "unvalidated", 3: "missing"}
    problems = "\n".join(comparison.problems())
    assert f"{ZOO}, fold 1: still training ({EPOCHS} of {EPOCHS} epochs logged" in problems
    assert f"{ZOO}, fold 2: trained but not validated" in problems and "--val" in problems
    assert f"{ZOO}, fold 3: not trained" in problems and "nnUNetTrainer 2d, fold 1: not trained" in problems
    assert list(comparison.runs[1].dice(FOREGROUND)) == [0]  # only the validated fold is in the numbers
    [row] = paired_differences(comparison)
    assert row["folds"] == 1
    report = format_markdown(comparison)
    assert "| training |" in report and "| unvalidated |" in report and "| missing |" in report
    paths = write_report(comparison, tmp_path / "report")
    assert paths["figure"].is_file() and "| training |" in paths["markdown"].read_text()


def test_compare_refuses_what_it_cannot_find(runs):
    env = runs["env"]
    err = bridge(["compare", str(CT_ID), "2d_upernet_dinov3_small"], env, expect_fail=True)
    assert "configuration '2d_upernet_dinov3_small' is not in the plans" in err and "segzoo-nnunet plan" in err
    err = bridge(["compare", str(CT_ID), ZOO, "--reference", "3d_fullres"], env, expect_fail=True)
    assert "3d_fullres" in err and "Traceback" not in err


def test_compare_names_an_unknown_dataset(tmp_path):
    from nnunet_bridge.report.compare import gather

    with pytest.raises(FileNotFoundError, match="no dataset 987 in nnUNet_raw"):
        gather(987, results_folder=tmp_path)


# -- helpers ---------------------------------------------------------------------------


def _network_parameters(run_folder: Path) -> int:
    """``parameters()`` of the network nnU-Net builds for a run (U-Net: its decoder shares the encoder)."""
    return sum(p.numel() for p in _network(run_folder, deep_supervision=True).parameters())


def _checkpoint_weights(fold: Path) -> dict:
    import torch

    return torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]


def _geometry(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return image.GetSize(), tuple(round(s, 4) for s in image.GetSpacing())


def _spread_classes(run_folder: Path, images: Path, work: Path) -> None:
    """Rewrite fold 0's classifier so that each class wins on about a third of the test volume.

    nnU-Net's prediction is linear in the logits up to the softmax (Gaussian-weighted windows,
    mirrored copies, resampling), so one in-process prediction with the logits (0, 0, d.f) for a
    random direction d gives the averaged projection P = log(p2 / p0) at every voxel. The logits
    (q1 - d.f, 0, d.f - q2), with q1 and q2 P's terciles, then give class 0 below q1, class 2 above
    q2 and class 1 between, whatever the short training learnt."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    checkpoint_file = run_folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    weights = checkpoint["network_weights"]
    [classifier] = [k for k in weights if k.endswith("decode_head.classifier.weight")]
    bias = classifier.replace(".weight", ".bias")
    direction = torch.randn(weights[classifier][:1].shape, generator=torch.Generator().manual_seed(0))
    zero = torch.zeros_like(direction)

    def save(rows: list[torch.Tensor], offsets: list[float]) -> None:
        weights[classifier], weights[bias] = torch.cat(rows), torch.tensor(offsets)
        torch.save(checkpoint, checkpoint_file)

    save([zero, zero, direction], [0.0, 0.0, 0.0])
    predictor = nnUNetPredictor(perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False,
                                verbose_preprocessing=False)
    predictor.initialize_from_trained_model_folder(str(run_folder), use_folds=(0,))
    work.mkdir()  # the sequential path writes its arguments file before creating the folder
    predictor.predict_from_files_sequential(str(images), str(work), save_probabilities=True)
    [probabilities] = [np.load(f)["probabilities"] for f in work.glob("*.npz")]
    projection = np.log(probabilities[2]) - np.log(probabilities[0])
    low, high = np.quantile(projection, [1 / 3, 2 / 3])
    save([-direction, zero, direction], [float(low), 0.0, -float(high)])


def _network(run_folder: Path, deep_supervision: bool = False) -> torch.nn.Module:
    """The network nnU-Net builds for a run from its plans."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(json.loads((run_folder / "plans.json").read_text()))
    dataset_json = json.loads((run_folder / "dataset.json").read_text())
    config = plans.get_configuration(run_folder.name.rsplit("__", 1)[1])
    return get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                  config.network_arch_init_kwargs_req_import,
                                  determine_num_input_channels(plans, config, dataset_json),
                                  plans.get_label_manager(dataset_json).num_segmentation_heads, allow_init=True,
                                  deep_supervision=deep_supervision)


def _spacing(path: Path) -> tuple[float, ...]:
    import SimpleITK as sitk

    return tuple(sitk.ReadImage(str(path)).GetSpacing())


def _voxels(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


