"""The compatibility layout: the four same-stride ViT maps go to the head unchanged."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["IdentityNeck"]


class IdentityNeck(nn.Module):
    """No resampling, no parameters: every level keeps the backbone stride.

    Cheaper than the pyramid and the baseline it is compared against; thin
    structures suffer (see the README's quality note).
    """

    def __init__(self, in_channels: list[int]):
        super().__init__()
        self.out_channels = list(in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(features)
