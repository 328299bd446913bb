"""UperNet decode head (Xiao et al. 2018): pyramid pooling on the coarsest map plus an
FPN over all maps, reused from transformers' ``UperNetHead``."""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import UperNetConfig
from transformers.models.upernet.modeling_upernet import UperNetHead

from .._validation import positive_int

__all__ = ["UperNetDecodeHead", "create_upernet_head"]


class UperNetDecodeHead(UperNetHead):
    """transformers' ``UperNetHead`` (unchanged computation) with an early, readable
    error for the one input it cannot train on.

    The pyramid-pooling branch with pool scale 1 averages each map to 1x1 and
    batch-normalises it: in training, a batch of one image leaves a single value per
    channel and BatchNorm cannot compute a variance.
    """

    def forward(self, encoder_hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.training and encoder_hidden_states[-1].shape[0] == 1 and 1 in tuple(self.pool_scales):
            raise ValueError(
                "UperNet cannot train on a batch of 1: its pyramid pooling batch-normalises 1x1 maps. "
                "Use a batch size >= 2, or call model.eval() for inference."
            )
        return super().forward(list(encoder_hidden_states))


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
