"""Shared test settings: tiny backbones through the real factories, no network."""

from __future__ import annotations

import importlib.util
import os
from importlib.metadata import PackageNotFoundError, version

# No test may reach the internet; the Hub tests point HF_ENDPOINT at a local server.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("nnUNet_def_n_proc", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker (and per process it starts): the workers already use every core,
    # and tiny models gain nothing from intra-op threads
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
# dynamo would otherwise remember which shapes were dynamic in earlier runs (a profile in the cache
# folder), so whether a compile test recompiles would depend on what ran before it
torch._dynamo.config.automatic_dynamic_local_pgo = False

from tests.tiny_models import TINY_VIT, TINY_WIDTH  # noqa: E402

# The bridge's tests need nnunetv2 (the `nnunet` extra), which caps timm. Without it
# (`make test-zoo-latest`: the zoo on the newest timm) these modules are not collected, so the
# run tests the zoo alone instead of failing on imports; the header names them.
BRIDGE_TEST_MODULES = (
    "test_nnunet_bridge.py",
    "test_nnunet_cli_errors.py",
    "test_nnunet_compare.py",
    "test_nnunet_ddp.py",
    "test_nnunet_e2e.py",
    "test_checkpoint_safety.py",  # the bridge's checkpoint loading, through its CLI
    "test_onnx_predict.py",  # the bridge's ONNX predictor against nnunetv2's own functions
    "test_rank_device.py",  # the bridge's device placement for nnU-Net's trainer
)
# ... and the bridge's tests in modules that mostly test the zoo, skipped instead
BRIDGE_TESTS = (
    "tests/test_docs.py::test_doc_examples_run_and_print_what_they_say[nnunet.md]",
)
HAS_NNUNETV2 = importlib.util.find_spec("nnunetv2") is not None
collect_ignore = [] if HAS_NNUNETV2 else list(BRIDGE_TEST_MODULES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_NNUNETV2:
        return
    skip = pytest.mark.skip(reason="needs nnunetv2: pip install -e '.[nnunet]'")
    for item in items:
        if item.nodeid in BRIDGE_TESTS:
            item.add_marker(skip)


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The versions a run tested (`make test` and `make test-zoo-latest` differ in timm)."""
    names = ("torch", "timm", "transformers", "peft", "nnunetv2")
    lines = ["versions: " + ", ".join(f"{name} {_version(name)}" for name in names)]
    if not HAS_NNUNETV2:
        lines.append("nnunetv2 not installed (pip install -e '.[nnunet]'), so the bridge's tests are left out: "
                     + " ".join(collect_ignore))
    return lines


@pytest.fixture
def tiny() -> dict:
    """kwargs that shrink any zoo model's backbone and head for CPU tests."""
    return dict(backbone_kwargs=dict(TINY_VIT), decoder_hidden_size=TINY_WIDTH)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
