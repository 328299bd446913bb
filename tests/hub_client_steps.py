"""The Hub client steps of tests/test_hub.py, run in a fresh interpreter with HF_ENDPOINT,
HF_HOME and HF_HUB_OFFLINE set (huggingface_hub reads them when first imported):

    python -m tests.hub_client_steps TINY_JSON REF_DIR STEP[,STEP...]

Each step records {"ok": ..., "error": type, "message": ..., "stdout": ..., + step facts};
the last line printed is ``RESULTS=<json of step name -> record>``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from tests.hub_server import APPROVED_TOKEN
from tests.tiny_models import tiny_kwargs

PUSHED_REPO = "me/tiny-fundus-segformer"


def main(argv: list[str]) -> None:
    # imported here, not at module level: test_hub imports this module for PUSHED_REPO only
    import huggingface_hub
    import torch
    from safetensors.torch import load_file

    import segzoo

    tiny, ref_dir, steps = json.loads(argv[0]), argv[1], argv[2].split(",")
    results: dict[str, Any] = {}

    def run(name: str, fn: Callable[[], Any]) -> None:
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                facts = fn() or {}
            results[name] = {"ok": True, "stdout": out.getvalue(), **facts}
        except Exception as err:  # noqa: BLE001 - every failure is a recorded result
            results[name] = {"ok": False, "error": type(err).__name__, "message": str(err), "stdout": out.getvalue()}

    def max_diff(model, ref_file):
        ref = load_file(ref_file)
        own = model.backbone.model.state_dict()
        return max((own[k] - ref[k]).abs().max().item() for k in own)

    def dinov3():
        m = segzoo.create_model("segformer_dinov3_base", pretrained=True, num_classes=3, **tiny)
        with tempfile.TemporaryDirectory() as folder:  # the card names the downloaded repo as its base model
            card = huggingface_hub.ModelCard.load(segzoo.save_pretrained(m, folder) / "README.md")
        return {"max_diff": max_diff(m, os.path.join(ref_dir, "dinov3.safetensors")),
                "base_model": card.data.base_model, "license_name": card.data.license_name}

    def tagged():
        m = segzoo.create_model("segformer_dinov3_large.sat493m", pretrained=True, num_classes=3, **tiny)
        return {"max_diff": max_diff(m, os.path.join(ref_dir, "sat493m.safetensors")), "tag": m.pretrained_cfg["tag"]}

    def retfound():
        m = segzoo.create_model("segformer_retfound_large.cfp", pretrained=True, num_classes=2,
                                **tiny_kwargs("segformer_retfound_large"))
        return {"max_diff": max_diff(m, os.path.join(ref_dir, "retfound.safetensors"))}

    def push():
        torch.manual_seed(0)
        m = segzoo.create_model("segformer_dinov3_base", num_classes=3, neck="none", **tiny).eval()
        info = segzoo.push_to_hub(m, PUSHED_REPO, token="hf_writer")
        torch.save(m.state_dict(), os.path.join(ref_dir, "pushed.pt"))
        return {"commit": info.oid}

    def reload_pushed():
        m = segzoo.create_model(f"hf-hub:{PUSHED_REPO}").eval()
        ref = torch.load(os.path.join(ref_dir, "pushed.pt"), weights_only=True)
        x = torch.randn(1, 3, 40, 56)
        want = segzoo.create_model("segformer_dinov3_base", num_classes=3, neck="none", **tiny).eval()
        want.load_state_dict(ref)
        with torch.no_grad():
            return {"max_diff": (m(x) - want(x)).abs().max().item(), "kwargs": m.model_kwargs}

    def not_published():
        segzoo.create_model("segformer_dinov2_small", pretrained=True, num_classes=2, **tiny)

    def with_token(token, fn):
        def step():
            os.environ["HF_TOKEN"] = token
            try:
                return fn()
            finally:
                del os.environ["HF_TOKEN"]
        return step

    steps_by_name = {
        "download": dinov3,
        "cache_hit": dinov3,
        "tagged": tagged,
        "missing": not_published,
        "gated_no_token": retfound,
        "gated_no_access": with_token("hf_not_approved", retfound),
        "gated_approved": with_token(APPROVED_TOKEN, retfound),
        "push": push,
        "reload_pushed": reload_pushed,
        "offline_cached": dinov3,
        "offline_pushed": reload_pushed,
        "offline_not_cached": not_published,
    }
    for step in steps:
        run(step, steps_by_name[step])
    print("RESULTS=" + json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
