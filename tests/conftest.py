"""Shared test settings: tiny backbones through the real factories, no network."""

from __future__ import annotations

import os

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


@pytest.fixture
def tiny() -> dict:
    """kwargs that shrink any zoo model's backbone and head for CPU tests."""
    return dict(backbone_kwargs=dict(TINY_VIT), decoder_hidden_size=TINY_WIDTH)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
