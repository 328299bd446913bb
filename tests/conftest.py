"""Shared test settings: tiny backbones through the real factories, no network."""

from __future__ import annotations

import os

# No test may reach the internet; the Hub tests point HF_ENDPOINT at a local server.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("nnUNet_def_n_proc", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# depth 2, width 64: the same timm classes as the real models, at test size
TINY_BACKBONE = dict(depth=2, embed_dim=64, num_heads=2)


@pytest.fixture
def tiny() -> dict:
    """kwargs that shrink any zoo model's backbone and head for CPU tests."""
    return dict(backbone_kwargs=dict(TINY_BACKBONE), decoder_hidden_size=32)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
