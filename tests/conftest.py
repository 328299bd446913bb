"""Shared test settings: tiny backbones through the real factories, no network."""

from __future__ import annotations

import os

# No test may reach the internet; the Hub tests point HF_ENDPOINT at a local server.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("nnUNet_def_n_proc", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.tiny_models import TINY_VIT, TINY_WIDTH  # noqa: E402


@pytest.fixture
def tiny() -> dict:
    """kwargs that shrink any zoo model's backbone and head for CPU tests."""
    return dict(backbone_kwargs=dict(TINY_VIT), decoder_hidden_size=TINY_WIDTH)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
