"""ONNX export of one tiny model per backbone family and head, checked with ONNX Runtime against eager;
what both export commands write and print (every file, one self-contained .onnx below 2 GB), and how
they speak to a CLI user."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import segzoo
from tests.tiny_models import TINY_EOMT, TINY_MASK2FORMER, TINY_MIT, TINY_VIT, tiny_kwargs

pytest.importorskip("onnxruntime", reason="the export extra (pip install 'segzoo[export]')")

TINY = dict(backbone_kwargs=TINY_VIT, decoder_hidden_size=32)


@pytest.mark.parametrize("name, size, kwargs", [
    ("segformer_dinov3_small", 64, TINY),
    ("upernet_dinov2_small", 56, TINY),
    ("dpt_dinov2_reg4_small", 42, TINY),
    ("segformer_retfound_large", 48, tiny_kwargs("segformer_retfound_large")),
    ("segformer_visionfm_base", 48, tiny_kwargs("segformer_visionfm_base")),
    ("mask2former_dinov3_small", 32, {**TINY, **TINY_MASK2FORMER}),
    ("eomt_dinov3_small", 32, TINY_EOMT),  # a new model: masked attention on, traced into the graph
])
def test_vit_families_export_at_their_size_with_a_dynamic_batch(tmp_path, name, size, kwargs):
    model = segzoo.create_model(name, num_classes=3, img_size=size, **kwargs).train()
    path = segzoo.export_onnx(model, tmp_path / "model.onnx")  # checks batch 1 and 3 against eager (<= 1e-4)
    assert path.stat().st_size > 0 and model.training  # its mode is restored


def test_mit_exports_with_dynamic_height_and_width(tmp_path):
    from segzoo.export import check_onnx, describe_onnx

    model = segzoo.create_model("segformer_mit_b0", num_classes=3, **TINY_MIT)
    path = segzoo.export_onnx(model, tmp_path / "mit.onnx", img_size=64, dynamic_size=True)
    described = describe_onnx(path)
    assert described.inputs == {"image": ("B", 3, "H", "W")} and described.outputs == {"logits": ("B", 3, "H", "W")}
    assert described.files == [path]
    for size in ((96, 80), (45, 77)):  # other sizes than the traced one, odd ones included
        assert check_onnx(model, path, size) <= 1e-4


def test_export_rules_are_named(tmp_path):
    model = segzoo.create_model("segformer_dinov3_small", num_classes=3, **TINY)
    with pytest.raises(ValueError, match=r"pass img_size=\.\.\."):
        segzoo.export_onnx(model, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="only segformer_mit_\\* models export with dynamic height and width"):
        segzoo.export_onnx(model, tmp_path / "x.onnx", img_size=64, dynamic_size=True)
    fixed = segzoo.create_model("segformer_dinov3_small", num_classes=3, img_size=64, **TINY)
    with pytest.raises(ValueError, match=r"built for img_size=\(64, 64\)"):
        segzoo.export_onnx(fixed, tmp_path / "x.onnx", img_size=128)


def test_cli_exports_a_saved_folder(tmp_path, capsys):
    from segzoo.cli import main

    model = segzoo.create_model("segformer_mit_b0", num_classes=2, **TINY_MIT)
    folder = segzoo.save_pretrained(model, tmp_path / "saved")
    assert main(["export", str(folder), "--onnx", str(tmp_path / "out.onnx"), "--img-size", "64", "48"]) == 0
    out = capsys.readouterr().out
    assert "checked against eager with ONNX Runtime" in out
    assert "input 'image' (B, 3, 64, 48) -> 'logits' (B, 2, 64, 48)" in out, out  # the traced size: not dynamic
    assert (tmp_path / "out.onnx").is_file()


def test_onnx_is_imported_only_when_exporting():
    import subprocess

    program = "import sys, segzoo; assert not {'onnx', 'onnxscript', 'onnxruntime'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", program], check=True, timeout=300)


def test_torch_export_follows_the_same_rules():
    """torch.export itself (for runtimes other than ONNX): MiT with dynamic H/W, a ViT at its size."""
    import torch

    mit = segzoo.create_model("segformer_mit_b0", num_classes=3, **TINY_MIT).eval()
    # Dim.AUTO: export keeps the sizes symbolic where the model allows and records its guards
    # (a fixed Dim range asks export to prove guards such as (h - 1) // 4 + 1 != h, which it cannot)
    dims = {"x": {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}}
    program = torch.export.export(mit, (torch.randn(2, 3, 64, 64),), dynamic_shapes=dims)
    x = torch.randn(3, 3, 72, 88)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), mit(x))

    vit = segzoo.create_model("segformer_dinov2_small", num_classes=3, img_size=56, **TINY).eval()
    program = torch.export.export(vit, (torch.randn(2, 3, 56, 56),),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}})
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), vit(x))


def test_cli_errors_name_the_flags(tmp_path, capsys):
    """The command's refusals speak its flags (--num-classes, --img-size, --dynamic-size), write nothing
    and show no traceback."""
    from segzoo.cli import main

    folder = segzoo.save_pretrained(segzoo.create_model("segformer_dinov3_small", num_classes=2, **TINY),
                                    tmp_path / "saved")
    fixed = segzoo.save_pretrained(segzoo.create_model("segformer_dinov3_small", num_classes=2, img_size=32, **TINY),
                                   tmp_path / "fixed")
    out = str(tmp_path / "out.onnx")
    cases = [
        (["export", "segformer_dinov3_small", "--onnx", out], "pass --num-classes K"),
        (["export", str(folder), "--onnx", out], "pass --img-size N (a square) or --img-size H W"),
        (["export", str(fixed), "--onnx", out, "--img-size", "64"], "built for 32x32 images: leave --img-size out or "
                                                                   "pass --img-size 32 32"),
        (["export", str(folder), "--onnx", out, "--img-size", "32", "--dynamic-size"], "--dynamic-size: only"),
        (["export", str(folder), "--onnx", out, "--img-size", "32", "32", "3"], "--img-size takes one size"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("segzoo: ") and message in err and "Traceback" not in err, (argv, err)
        assert "num_classes=" not in err and "img_size=" not in err and "dynamic_size" not in err, err
    assert not (tmp_path / "out.onnx").exists()


def _written(stdout: str) -> list[Path]:
    """The files a command says it wrote: ``wrote PATH (...)`` lines, or ``wrote A (...) and B``."""
    files = []
    for line in stdout.splitlines():
        if line.startswith("wrote "):
            files.append(Path(line.split()[1]))
            if ") and " in line:
                files.append(Path(line.rsplit(") and ", 1)[1].strip()))
    return files


def _runs_alone(files: list[Path], elsewhere: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Copy exactly ``files`` to a fresh folder and run the .onnx among them there with ONNX Runtime."""
    import onnxruntime

    elsewhere.mkdir()
    for file in files:
        shutil.copy(file, elsewhere / file.name)
    [model] = [elsewhere / f.name for f in files if f.suffix == ".onnx"]
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": np.random.rand(*shape).astype(np.float32)})[0]


CHATTER = ("Skipping constant folding", "[torch.onnx]", "torch.onnx", "onnxscript", "Warning", "warn")


def test_cli_writes_one_file_that_runs_on_its_own_and_prints_it_quietly(tmp_path):
    """`segzoo export` of a fixed-size model: one .onnx with the weights inside, the only file printed,
    its real input shape printed, and none of the exporter's chatter on stdout or stderr."""
    model = segzoo.create_model("segformer_dinov3_small", num_classes=2, img_size=32, **TINY)
    folder = segzoo.save_pretrained(model, tmp_path / "saved")
    result = subprocess.run([sys.executable, "-m", "segzoo.cli", "export", str(folder), "--onnx",
                             str(tmp_path / "out" / "full.onnx")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == "", result.stderr[-3000:]
    assert not any(word in result.stdout for word in CHATTER), result.stdout
    assert "input 'image' (B, 3, 32, 32) -> 'logits' (B, 2, 32, 32)" in result.stdout, result.stdout
    files = _written(result.stdout)
    assert files == [tmp_path / "out" / "full.onnx"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["full.onnx"]  # no .onnx.data beside it
    assert _runs_alone(files, tmp_path / "deploy", (2, 3, 32, 32)).shape == (2, 2, 32, 32)


def test_cli_verbose_shows_the_exporters_notes(tmp_path, capfd):
    from segzoo.cli import main

    model = segzoo.create_model("segformer_dinov3_small", num_classes=2, img_size=32, **TINY)
    folder = segzoo.save_pretrained(model, tmp_path / "saved")
    assert main(["export", str(folder), "--onnx", str(tmp_path / "x.onnx"), "--verbose"]) == 0
    captured = capfd.readouterr()
    assert "[torch.onnx]" in captured.out + captured.err


def test_weights_over_the_limit_go_to_a_printed_sidecar(tmp_path, capsys, monkeypatch):
    """Above ONNX's 2 GB protobuf limit (lowered here to 0 bytes) the weights go to OUT.onnx.data, which
    the command prints and describe_onnx lists; the printed pair runs elsewhere, the .onnx alone does not."""
    import onnxruntime

    from segzoo.cli import main
    from segzoo.export import describe_onnx

    monkeypatch.setattr("segzoo.export._EMBED_LIMIT", 0)
    model = segzoo.create_model("segformer_dinov3_small", num_classes=2, img_size=32, **TINY)
    folder = segzoo.save_pretrained(model, tmp_path / "saved")
    assert main(["export", str(folder), "--onnx", str(tmp_path / "big.onnx")]) == 0
    files = _written(capsys.readouterr().out)
    assert files == describe_onnx(tmp_path / "big.onnx").files == [tmp_path / "big.onnx", tmp_path / "big.onnx.data"]
    assert _runs_alone(files, tmp_path / "deploy", (1, 3, 32, 32)).shape == (1, 2, 32, 32)
    (tmp_path / "alone").mkdir()
    shutil.copy(files[0], tmp_path / "alone" / "big.onnx")
    with pytest.raises(Exception, match="big.onnx.data"):
        onnxruntime.InferenceSession(str(tmp_path / "alone" / "big.onnx"), providers=["CPUExecutionProvider"])


# -- segzoo-nnunet export ---------------------------------------------------------------


def _fake_fold(base: Path) -> dict[str, str]:
    """nnU-Net's folders with a zoo configuration of a tiny model planned and fold 0 holding its
    (untrained) weights, as a run writes them; the environment to run commands in."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from tests.nnunet_runs import nnunet_env
    from tests.tiny_models import TINY_VIT

    env = nnunet_env(base)
    name, zoo = "Dataset977_OnnxFiles", "2d_segformer_dinov3_small"
    arch_kwargs = {"model_name": "segformer_dinov3_small", "lora": None, "input_normalization": "backbone",
                   "model_kwargs": {"backbone_kwargs": dict(TINY_VIT), "decoder_hidden_size": 32}}
    configuration = {
        "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [32, 32], "median_image_size_in_voxels": [40, 40], "spacing": [1.0, 1.0],
        "normalization_schemes": ["RGBTo01Normalization"] * 3, "use_mask_for_norm": [False] * 3,
        "architecture": {"network_class_name": "nnunet_bridge.network.build_zoo_network",
                         "arch_kwargs": arch_kwargs, "_kw_requires_import": []},
    }
    plans = {"dataset_name": name, "plans_name": "nnUNetPlans", "transpose_forward": [0, 1, 2],
             "transpose_backward": [0, 1, 2], "original_median_spacing_after_transp": [999.0, 1.0, 1.0],
             "image_reader_writer": "NaturalImage2DIO", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {}, "configurations": {zoo: configuration}}
    dataset = {"labels": {"background": 0, "disc": 1}, "channel_names": {"0": "R", "1": "G", "2": "B"},
               "numTraining": 1, "file_ending": ".png"}
    plans_file = Path(env["nnUNet_preprocessed"]) / name / "nnUNetPlans.json"
    plans_file.parent.mkdir(parents=True)
    plans_file.write_text(json.dumps(plans))
    (Path(env["nnUNet_raw"]) / name).mkdir(parents=True)
    run = Path(env["nnUNet_results"]) / name / f"nnUNetTrainerSegZoo__nnUNetPlans__{zoo}"
    (run / "fold_0").mkdir(parents=True)
    (run / "plans.json").write_text(json.dumps(plans))
    (run / "dataset.json").write_text(json.dumps(dataset))
    network = get_network_from_plans(configuration["architecture"]["network_class_name"], arch_kwargs, [], 3, 2,
                                     allow_init=True, deep_supervision=False)
    torch.save({"network_weights": network.state_dict(), "inference_allowed_mirroring_axes": (0, 1),
                "trainer_name": "nnUNetTrainerSegZoo"}, run / "fold_0" / "checkpoint_final.pth")
    return env


def test_bridge_export_prints_every_file_it_writes_and_they_run_elsewhere(tmp_path):
    """`segzoo-nnunet export`: the .onnx (weights inside) and its .json are all it writes and prints;
    copied alone they run; no exporter chatter."""
    from tests.nnunet_runs import bridge

    env = _fake_fold(tmp_path)
    out = tmp_path / "export"
    output = bridge(["export", "-d", "977", "-c", "2d_segformer_dinov3_small", "-f", "0", "-o",
                     str(out / "fold0.onnx")], env)
    assert not any(word in output for word in CHATTER), output
    files = _written(output)
    assert files == [out / "fold0.onnx", out / "fold0.json"], output
    assert sorted(p.name for p in out.iterdir()) == ["fold0.json", "fold0.onnx"]
    assert _runs_alone(files, tmp_path / "deploy", (2, 3, 32, 32)).shape == (2, 2, 32, 32)
    facts = json.loads((tmp_path / "deploy" / "fold0.json").read_text())
    assert facts["file_ending"] == ".png" and facts["transpose_forward"] == [0, 1, 2]
