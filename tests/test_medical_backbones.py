"""CT and chest X-ray backbones: MedDINOv3 (DINOv3 ViT-B/16, CT-3M) and RAD-DINO (DINOv2 ViT-B/14, chest X-rays).

Their files are written at test size in exactly the published layouts (tests/checkpoint_layouts.py):
MedDINOv3's model.pth is DINOv3 training's {'teacher': ...} file; RAD-DINO's model.safetensors is
a real transformers Dinov2Model's save_pretrained output, and its backbone_compatible.safetensors
holds the same tensors under the DINOv2 repository's names. They load through the same loader and
load report as every family, from a local path and from the Hub (tests/hub_server.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import segzoo
from tests.checkpoint_layouts import dinov2_repo_layout, meddinov3_checkpoint, source_vit, transformers_dinov2
from tests.hub_server import APPROVED_TOKEN, LocalHub
from tests.tiny_models import tiny_kwargs, tiny_vit

ROOT = Path(__file__).resolve().parents[1]
MEDDINOV3, RAD_DINO = "segformer_meddinov3_base", "segformer_rad_dino_base"
MEDDINOV3_REPO, RAD_DINO_REPO = "ricklisz123/MedDINOv3-ViTB-16-CT-3M", "microsoft/rad-dino"
HEADS = ("segformer", "upernet", "mask2former", "dpt", "eomt")


def _create(name: str, **kwargs):
    return segzoo.create_model(name, num_classes=2, **tiny_kwargs(name), **kwargs).eval()


def _source_features(source: torch.nn.Module, indices: list[int], x: torch.Tensor) -> list[torch.Tensor]:
    return [source.forward_intermediates(x, indices=[i], intermediates_only=True, output_fmt="NCHW")[0]
            for i in indices]


def _transformers_features(reference, indices: list[int], x: torch.Tensor) -> list[torch.Tensor]:
    """transformers' own block outputs (hidden_states[i + 1]), patch tokens as NCHW maps."""
    with torch.no_grad():
        hidden = reference(pixel_values=x, output_hidden_states=True).hidden_states
    grid = (x.shape[-2] // 14, x.shape[-1] // 14)
    return [hidden[i + 1][:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid) for i in indices]


@pytest.fixture
def meddinov3_file(tmp_path) -> tuple[torch.nn.Module, Path]:
    source = source_vit("meddinov3_base")
    torch.save(meddinov3_checkpoint(source.state_dict(), num_heads=2), tmp_path / "model.pth")
    return source, tmp_path / "model.pth"


@pytest.fixture
def rad_dino_files(tmp_path) -> tuple[torch.nn.Module, Path, Path]:
    reference = transformers_dinov2()
    reference.save_pretrained(tmp_path / "rad-dino")
    save_file(dinov2_repo_layout(reference), str(tmp_path / "rad-dino" / "backbone_compatible.safetensors"))
    return reference, tmp_path / "rad-dino" / "model.safetensors", tmp_path / "rad-dino" / "backbone_compatible.safetensors"


def test_meddinov3_model_pth_loads_to_the_source_models_features(meddinov3_file, capsys):
    source, path = meddinov3_file
    model = _create(MEDDINOV3, checkpoint_path=path)
    report = capsys.readouterr().out
    # dropped: dino_head and ibot_head (7 tensors each), the mask token and the RoPE periods
    assert "(dino_teacher)" in report and "0 missing, 0 unexpected" in report, report
    assert "16 pre-training only dropped" in report, report
    x = torch.randn(1, 3, 48, 80)  # not square: RoPE's two axes must line up
    with torch.no_grad():
        for got, want in zip(model.backbone(x), _source_features(source, model.backbone.feature_indices, x)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_meddinov3_layout_is_the_one_its_code_loads(meddinov3_file):
    """The published loader keeps teacher keys without 'ibot'/'dino_head' and strips 'backbone.': what is
    left must be exactly Meta's DINOv3 ViT (storage tokens, no qkv bias) and all of it must load."""
    _, path = meddinov3_file
    teacher = torch.load(path, weights_only=True)["teacher"]
    kept = {k.replace("backbone.", ""): v for k, v in teacher.items() if "ibot" not in k and "dino_head" not in k}
    assert {"storage_tokens", "rope_embed.periods", "mask_token", "blocks.0.ls1.gamma"} <= set(kept)
    assert not any(k.endswith(("qkv.bias", "bias_mask")) for k in kept)
    report = segzoo.load_backbone_weights(_create(MEDDINOV3), checkpoint_path=path, verbose=False)
    # every backbone tensor lands (in timm's names) or is pruned on purpose; only the mask token and RoPE periods drop
    assert len(report.loaded) + len(report.unused) == len(kept) - 2
    assert sorted(k for k in report.dropped if not k.startswith(("dino_head.", "ibot_head."))) == \
        ["mask_token", "rope_embed.periods"]


def test_rad_dino_transformers_file_gives_transformers_features(rad_dino_files, capsys):
    reference, model_file, _ = rad_dino_files
    model = _create(RAD_DINO, checkpoint_path=model_file)
    report = capsys.readouterr().out
    assert "(transformers_dinov2)" in report and "0 missing, 0 unexpected" in report, report
    assert "1 pre-training only dropped" in report  # the mask token
    x = torch.randn(1, 3, 518, 518)  # the published size: both sides use the position table as stored
    with torch.no_grad():
        got = model.backbone(x)
    for g, w in zip(got, _transformers_features(reference, model.backbone.feature_indices, x)):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_rad_dino_both_published_files_give_one_model(rad_dino_files, capsys):
    _, model_file, backbone_file = rad_dino_files
    from_transformers = _create(RAD_DINO, checkpoint_path=model_file)
    from_dinov2_layout = _create(RAD_DINO, checkpoint_path=backbone_file)
    assert "(dinov2)" in capsys.readouterr().out.splitlines()[-1]
    want = from_transformers.backbone.state_dict()
    for key, value in from_dinov2_layout.backbone.state_dict().items():
        torch.testing.assert_close(value, want[key], rtol=0, atol=0, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("name", [MEDDINOV3, RAD_DINO])
def test_one_channel_input_adapts_the_patch_filters_like_a_repeated_grey_image(name, meddinov3_file, rad_dino_files,
                                                                              capsys):
    path = meddinov3_file[1] if name == MEDDINOV3 else rad_dino_files[1]
    rgb = _create(name, checkpoint_path=path)
    grey = _create(name, in_chans=1, checkpoint_path=path)
    assert "adapted to in_chans: patch_embed.proj.weight 3 -> 1 channels" in capsys.readouterr().out
    patch = rgb.patch_size
    x = torch.randn(1, 1, 3 * patch, 4 * patch)
    with torch.no_grad():  # the authors repeat the slice in three channels; in_chans=1 sums the filters instead
        for g, w in zip(grey.backbone(x), rgb.backbone(x.repeat(1, 3, 1, 1))):
            torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_pretrained_cfg_states_licence_source_normalisation_and_channel_advice():
    ct = _create(MEDDINOV3).pretrained_cfg
    assert (ct["license"], ct["hf_hub_id"], ct["hf_hub_filename"]) == ("apache-2.0", MEDDINOV3_REPO, "model.pth")
    assert "github.com/ricklisz/MedDINOv3" in ct["source"] and ct["patch_size"] == 16
    assert "in_chans=1" in ct["input_advice"] and "[-1000, 1000] HU" in ct["input_advice"]
    # on the [-1000, 1000] HU window scaled to [0, 1], mean/std reproduce the authors' (HU - 65.11) / 178.02
    hu = torch.linspace(-1000, 1000, 21, dtype=torch.float64)
    normalised = ((hu + 1000) / 2000 - ct["mean"][0]) / ct["std"][0]
    torch.testing.assert_close(normalised, (hu - 65.1084213256836) / 178.01663208007812)
    assert len(set(ct["mean"])) == len(set(ct["std"])) == 1  # one grey value in every channel

    cxr = _create(RAD_DINO).pretrained_cfg
    assert (cxr["license"], cxr["license_name"]) == ("other", "msrla")
    assert (cxr["hf_hub_id"], cxr["hf_hub_filename"], cxr["patch_size"]) == (RAD_DINO_REPO, "model.safetensors", 14)
    assert cxr["mean"] == [0.5307] * 3 and cxr["std"] == [0.2583] * 3 and "in_chans=1" in cxr["input_advice"]


def test_both_backbones_are_under_every_vit_head():
    for backbone in ("meddinov3_base", "rad_dino_base"):
        assert {f"{head}_{backbone}" for head in HEADS} <= set(segzoo.list_models(f"*{backbone}"))
    eomt = segzoo.create_model("eomt_rad_dino_base", num_classes=2, num_queries=4, num_blocks=2,
                               backbone_kwargs=tiny_vit(RAD_DINO))
    assert eomt.backbone.patch_size == 14 and eomt.pretrained_cfg["hf_hub_id"] == RAD_DINO_REPO


# -- the Hub path, with the real huggingface_hub client against the local stand-in -----------

_CLIENT = """
import json, os, sys
import torch
from safetensors.torch import load_file
import segzoo
from tests.tiny_models import tiny_kwargs

ref_dir, results = sys.argv[1], {}
def step(name, model_name, ref, token=None):
    if token:
        os.environ["HF_TOKEN"] = token
    try:
        model = segzoo.create_model(model_name, pretrained=True, num_classes=2, **tiny_kwargs(model_name))
        want = load_file(os.path.join(ref_dir, ref))
        own = model.backbone.state_dict()
        results[name] = {"ok": True, "max_diff": max((own[k] - want[k]).abs().max().item() for k in want),
                         "same_keys": sorted(own) == sorted(want), "hub_id": model.pretrained_cfg["hf_hub_id"]}
    except Exception as err:
        results[name] = {"ok": False, "error": type(err).__name__, "message": str(err)}
    finally:
        os.environ.pop("HF_TOKEN", None)
step("meddinov3", "segformer_meddinov3_base", "meddinov3.safetensors")
step("rad_dino_no_token", "segformer_rad_dino_base", "rad_dino.safetensors")
step("rad_dino_approved", "segformer_rad_dino_base", "rad_dino.safetensors", token=sys.argv[2])
print("RESULTS=" + json.dumps(results))
"""


@pytest.fixture(scope="module")
def hub_results(tmp_path_factory) -> dict:
    """MedDINOv3's model.pth served ungated, RAD-DINO's model.safetensors gated; the reference for each is
    the backbone that checkpoint_path= builds from the same file."""
    tmp = tmp_path_factory.mktemp("medical_hub")
    source = source_vit("meddinov3_base")
    torch.save(meddinov3_checkpoint(source.state_dict(), num_heads=2), tmp / "model.pth")
    reference = transformers_dinov2()
    reference.save_pretrained(tmp / "rad-dino")
    for name, file, ref in ((MEDDINOV3, tmp / "model.pth", "meddinov3.safetensors"),
                            (RAD_DINO, tmp / "rad-dino" / "model.safetensors", "rad_dino.safetensors")):
        model = segzoo.create_model(name, num_classes=2, checkpoint_path=file, **tiny_kwargs(name))
        save_file({k: v.contiguous() for k, v in model.backbone.state_dict().items()}, str(tmp / ref))
    with LocalHub() as hub:
        hub.add_file(MEDDINOV3_REPO, "model.pth", (tmp / "model.pth").read_bytes())
        hub.add_file(RAD_DINO_REPO, "model.safetensors", (tmp / "rad-dino" / "model.safetensors").read_bytes(),
                     gated=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp / "hf"), HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1",
                   HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(ROOT))
        proc = subprocess.run([sys.executable, "-c", _CLIENT, str(tmp), APPROVED_TOKEN], env=env, cwd=str(ROOT),
                              capture_output=True, text=True, timeout=300)
        downloads = hub.requests("GET", "/resolve/")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS=")]
    assert lines, f"client failed:\n{proc.stdout}\n{proc.stderr}"
    return {**json.loads(lines[-1][len("RESULTS="):]), "downloads": downloads}


def test_pretrained_downloads_meddinov3_model_pth_and_loads_it_as_checkpoint_path_does(hub_results):
    step = hub_results["meddinov3"]
    assert step["ok"], step
    assert step["max_diff"] == 0.0 and step["same_keys"] and step["hub_id"] == MEDDINOV3_REPO
    assert any(p.endswith(f"{MEDDINOV3_REPO}/resolve/main/model.pth") for p in hub_results["downloads"])


def test_gated_rad_dino_says_so_and_loads_once_access_is_granted(hub_results):
    refused = hub_results["rad_dino_no_token"]
    assert refused["error"] == "HubAccessError", refused
    assert f"{RAD_DINO_REPO} is a gated repository" in refused["message"] and "HF_TOKEN" in refused["message"]
    assert "checkpoint_path" in refused["message"]
    step = hub_results["rad_dino_approved"]
    assert step["ok"], step
    assert step["max_diff"] == 0.0 and step["same_keys"] and step["hub_id"] == RAD_DINO_REPO
