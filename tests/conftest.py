"""Shared test settings: tiny backbones through the real factories, no network."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

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
# (`make test-zoo-latest`: the zoo on the newest timm) they are left out, so the run tests the
# zoo alone instead of failing on imports; the header names what was left out. Found, not listed:
# a module that imports the bridge or nnU-Net at its top is not collected, and a test in an
# nnU-Net xdist group (the groups that share prepared nnU-Net folders) is skipped.
TESTS = Path(__file__).resolve().parent
# ... and the bridge's tests in modules that mostly test the zoo: listed, and every docs page
# whose examples import the bridge or nnU-Net (the deployment predictor needs neither nnunetv2 nor torch)
_BRIDGE_IMPORT = re.compile(r"^\s*(from|import)\s+(nnunetv2|nnunet_bridge(?!\.deploy))\b", re.M)
BRIDGE_TESTS = (
    "tests/test_export.py::test_bridge_export_prints_every_file_it_writes_and_they_run_elsewhere",
    *(f"tests/test_docs.py::test_doc_examples_run_and_print_what_they_say[{page.name}]"
      for page in sorted((TESTS.parent / "docs").glob("*.md")) if _BRIDGE_IMPORT.search(page.read_text())),
)


def _imports_the_bridge(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    names = [alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module or "" for node in tree.body if isinstance(node, ast.ImportFrom)]
    return any(name.split(".")[0] in ("nnunet_bridge", "nnunetv2") for name in names)


HAS_NNUNETV2 = importlib.util.find_spec("nnunetv2") is not None
collect_ignore = [] if HAS_NNUNETV2 else sorted(
    path.name for path in TESTS.glob("test_*.py") if _imports_the_bridge(path))


def _in_nnunet_group(item: pytest.Item) -> bool:
    return any(str(mark.args[0] if mark.args else mark.kwargs.get("name", "")).startswith("nnunet")
               for mark in item.iter_markers("xdist_group"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_NNUNETV2:
        return
    skip = pytest.mark.skip(reason="needs nnunetv2: pip install -e '.[nnunet]'")
    for item in items:
        if item.nodeid in BRIDGE_TESTS or _in_nnunet_group(item):
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
