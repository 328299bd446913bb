"""Hub downloads, cache, offline mode, access errors and push, through the real
huggingface_hub client against tests/hub_server.py (a local server that answers like the Hub).

huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE when first imported (timm imports it too),
so the client steps (tests/hub_client_steps.py) run in a subprocess with those variables set.
Each scenario runs once per module; the tests below assert one behaviour each on its
recorded results.
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

from tests.checkpoint_layouts import mae_checkpoint, source_vit
from tests.hub_client_steps import PUSHED_REPO
from tests.hub_server import LocalHub
from tests.tiny_models import TINY

ROOT = Path(__file__).resolve().parents[1]
DINOV3_REPO = "timm/vit_base_patch16_dinov3.lvd1689m"
SAT_REPO = "timm/vit_large_patch16_dinov3.sat493m"
RETFOUND_REPO = "YukunZhou/RETFound_mae_natureCFP"

def _run_client(hub: LocalHub, hf_home: Path, ref_dir: Path, steps: list[str], offline: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=hub.endpoint, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1" if offline else "0",
        HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(ROOT),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tests.hub_client_steps", json.dumps(TINY), str(ref_dir), ",".join(steps)],
        env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS=")]
    assert lines, f"client failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len("RESULTS="):])


pytestmark = pytest.mark.xdist_group("hub")  # one worker: its tests share the module's Hub server


@pytest.fixture(scope="session")  # one per worker: xdist may interleave other modules' tests
def hub_session(tmp_path_factory):
    """Serve tiny weights, run the online steps, then the offline ones; keep the request log."""
    tmp = tmp_path_factory.mktemp("hub")
    dinov3 = {k: v.contiguous() for k, v in source_vit("dinov3_base").state_dict().items()}
    retfound = source_vit("retfound_large").state_dict()
    save_file(dinov3, str(tmp / "dinov3.safetensors"))
    save_file({k: v.contiguous() for k, v in source_vit("dinov3_large").state_dict().items()}, str(tmp / "sat493m.safetensors"))
    save_file({k: v.contiguous() for k, v in retfound.items()}, str(tmp / "retfound.safetensors"))
    torch.save(mae_checkpoint(retfound), tmp / "retfound.pth")
    with LocalHub() as hub:
        hub.add_file(DINOV3_REPO, "model.safetensors", (tmp / "dinov3.safetensors").read_bytes())
        hub.add_file(SAT_REPO, "model.safetensors", (tmp / "sat493m.safetensors").read_bytes())
        hub.add_file(RETFOUND_REPO, "RETFound_mae_natureCFP.pth", (tmp / "retfound.pth").read_bytes(), gated=True)
        online = _run_client(
            hub, tmp / "hf", tmp,
            ["download", "cache_hit", "tagged", "missing", "gated_no_token", "gated_no_access", "gated_approved",
             "push", "reload_pushed"], offline=False,
        )
        log_after_online = list(hub.log)
        offline = _run_client(hub, tmp / "hf", tmp, ["offline_cached", "offline_pushed", "offline_not_cached"], offline=True)
        yield {"online": online, "offline": offline, "hub": hub, "log_online": log_after_online, "hf_home": tmp / "hf"}


def test_pretrained_downloads_backbone_weights_into_the_hf_cache(hub_session):
    step = hub_session["online"]["download"]
    assert step["ok"], step
    assert step["max_diff"] == 0.0
    assert "0 missing, 0 unexpected" in step["stdout"]
    cached = list((hub_session["hf_home"] / "hub").glob("models--timm--vit_base_patch16_dinov3.lvd1689m/snapshots/*/model.safetensors"))
    assert len(cached) == 1
    # a model saved after the download names that repo as its base model, under the weights' licence
    assert (step["base_model"], step["license_name"]) == (DINOV3_REPO, "dinov3-license")


def test_second_load_is_a_cache_hit(hub_session):
    assert hub_session["online"]["cache_hit"]["ok"]
    resolve = f"/{DINOV3_REPO}/resolve/main/model.safetensors"
    gets = [p for m, p in hub_session["log_online"] if m == "GET" and p == resolve]
    assert len(gets) == 1  # the second create_model only revalidated (HEAD), never re-downloaded


def test_pretrained_tag_picks_the_weights(hub_session):
    step = hub_session["online"]["tagged"]
    assert step["ok"], step
    assert step["max_diff"] == 0.0 and step["tag"] == "sat493m"
    assert ("GET", f"/{SAT_REPO}/resolve/main/model.safetensors") in hub_session["log_online"]


def test_offline_mode_works_from_the_cache_without_any_request(hub_session):
    offline = hub_session["offline"]
    assert offline["offline_cached"]["ok"] and offline["offline_cached"]["max_diff"] == 0.0
    assert offline["offline_pushed"]["ok"] and offline["offline_pushed"]["max_diff"] == 0.0
    assert hub_session["hub"].log == hub_session["log_online"]  # HF_HUB_OFFLINE=1: the server saw nothing


def test_offline_and_not_cached_says_what_to_do(hub_session):
    step = hub_session["offline"]["offline_not_cached"]
    assert step["error"] == "HubAccessError"
    assert "not in the Hugging Face cache" in step["message"] and "checkpoint_path" in step["message"]


def test_missing_repo_404_says_so_and_offers_checkpoint_path(hub_session):
    step = hub_session["online"]["missing"]
    assert step["error"] == "HubAccessError"
    assert "timm/vit_small_patch14_dinov2.lvd142m was not found" in step["message"]
    assert "checkpoint_path" in step["message"]


@pytest.mark.parametrize("step", ["gated_no_token", "gated_no_access"])
def test_gated_repo_401_403_says_how_to_get_access(hub_session, step):
    result = hub_session["online"][step]
    assert result["error"] == "HubAccessError"
    assert f"{RETFOUND_REPO} is a gated repository. Request access at" in result["message"]
    assert "HF_TOKEN" in result["message"] and "checkpoint_path" in result["message"]
    statuses = [code for m, p, code in hub_session["hub"].responses if m == "HEAD" and RETFOUND_REPO in p]
    assert statuses[:2] == [401, 403]  # no token, then a token without access; then the approved one
    assert statuses[2:] == [200]


def test_gated_retfound_file_downloads_with_access_and_loads_through_the_mae_loader(hub_session):
    step = hub_session["online"]["gated_approved"]
    assert step["ok"], step
    assert step["max_diff"] == 0.0
    assert "(mae)" in step["stdout"] and "pre-training only dropped" in step["stdout"]


def test_push_to_hub_then_create_model_from_hf_hub_id(hub_session):
    online = hub_session["online"]
    assert online["push"]["ok"], online["push"]
    pushed = hub_session["hub"].repos[PUSHED_REPO].files
    assert set(pushed) == {"config.json", "model.safetensors", "README.md"}
    config = json.loads(pushed["config.json"])
    assert config["architecture"] == "segformer_dinov3_base" and config["model_kwargs"]["neck"] == "none"
    posts = [p for m, p in hub_session["log_online"] if m == "POST"]
    assert posts[0] == "/api/repos/create" and posts[-1] == f"/api/models/{PUSHED_REPO}/commit/main"
    reload = online["reload_pushed"]
    assert reload["ok"], reload
    assert reload["max_diff"] == 0.0 and reload["kwargs"]["num_classes"] == 3
