"""UperNet decode head (Xiao et al. 2018): pyramid pooling on the coarsest map plus an
FPN over all maps, reused from transformers' ``UperNetHead``."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from transformers import UperNetConfig
from transformers.models.upernet.modeling_upernet import UperNetHead

from .._validation import positive_int

__all__ = ["UperNetDecodeHead", "create_upernet_head"]


class UperNetDecodeHead(UperNetHead):
    """transformers' ``UperNetHead`` (unchanged computation) with an early, readable
    error for the one input it cannot train on.

    BatchNorm in training mode needs more than one value per channel. With a batch of one
    image, the pyramid-pooling branch of scale 1 (and any layer on a 1x1 map) has exactly
    one: the error names those layers and the ways out.
    """

    def forward(self, encoder_hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        states = list(encoder_hidden_states)
        if states[0].shape[0] == 1:
            blocked = self._single_value_batch_norms(states)
            if blocked:
                raise ValueError(self._batch_of_one_message(blocked))
        return super().forward(states)

    def _single_value_batch_norms(self, states: list[torch.Tensor]) -> list[str]:
        """Layers whose BatchNorm is in training mode and would see one value per channel."""
        values = {f"psp_modules.{i}": scale * scale for i, scale in enumerate(self.pool_scales)}
        values["bottleneck"] = states[-1].shape[-2] * states[-1].shape[-1]
        for i, state in enumerate(states[:-1]):
            values[f"lateral_convs.{i}"] = values[f"fpn_convs.{i}"] = state.shape[-2] * state.shape[-1]
        values["fpn_bottleneck"] = states[0].shape[-2] * states[0].shape[-1]
        return [name for name, count in values.items() if count == 1 and any(
            m.training for m in self.get_submodule(name).modules() if isinstance(m, nn.BatchNorm2d))]

    def _batch_of_one_message(self, blocked: list[str]) -> str:
        scales = tuple(self.pool_scales)
        ways = ["use a batch size >= 2",
                "keep the head's BatchNorm layers in eval mode (their running statistics) while training",
                "call model.eval() for inference"]
        if any(name.startswith("psp_modules.") for name in blocked):
            ways.insert(1, f"leave scale 1 out of pool_scales={scales} (e.g. pool_scales="
                           f"{tuple(s for s in scales if s != 1) or (2, 3, 6)})")
        return (f"UperNet cannot train on a batch of 1: BatchNorm in training mode would see one value per channel "
                f"in {', '.join(blocked)}. Ways out: {'; '.join(ways)}")


def create_upernet_head(
    in_channels: list[int],
    num_classes: int,
    decoder_hidden_size: int = 512,
    pool_scales: Sequence[int] = (1, 2, 3, 6),
) -> UperNetDecodeHead:
    """UperNet head for feature maps with ``in_channels`` (finest first).

    ``decoder_hidden_size`` is UperNet's channel width (mmsegmentation's ``channels``;
    512 in the usual ViT + UperNet setups). Logits come out at the first map's resolution.
    """
    decoder_hidden_size = positive_int("decoder_hidden_size", decoder_hidden_size, "the head's width")
    scales = tuple(int(s) for s in pool_scales)
    if not scales or min(scales) < 1:
        raise ValueError(f"pool_scales must be positive output sizes of the pyramid pooling, got {pool_scales!r}")
    config = UperNetConfig(hidden_size=decoder_hidden_size, pool_scales=list(scales), num_labels=num_classes)
    return UperNetDecodeHead(config, in_channels=list(in_channels))
