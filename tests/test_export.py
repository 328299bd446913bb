"""ONNX export of one tiny model per backbone family and head, checked with ONNX Runtime against eager."""

from __future__ import annotations

import sys

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
    from segzoo.export import check_onnx

    model = segzoo.create_model("segformer_mit_b0", num_classes=3, **TINY_MIT)
    path = segzoo.export_onnx(model, tmp_path / "mit.onnx", img_size=64, dynamic_size=True)
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
    assert "checked against eager with ONNX Runtime" in capsys.readouterr().out
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


def test_cli_names_a_missing_size_without_a_traceback(tmp_path, capsys):
    from segzoo.cli import main

    model = segzoo.create_model("segformer_dinov3_small", num_classes=2, **TINY)
    folder = segzoo.save_pretrained(model, tmp_path / "saved")
    assert main(["export", str(folder), "--onnx", str(tmp_path / "out.onnx")]) == 2
    assert "segzoo: pass img_size=..." in capsys.readouterr().err
    assert not (tmp_path / "out.onnx").exists()
