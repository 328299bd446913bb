"""DPT's reassemble stage (Ranftl et al. 2021) as a neck: transformers' ``DPTReassembleLayer``
on the ViT's maps.

Each of the four same-stride maps is projected by a 1x1 convolution and resampled by a
fixed factor: x4 and x2 (transposed convolutions), x1, x0.5 (a stride-2 3x3 convolution),
so a patch-16 backbone gives strides 4, 8, 16, 32 (3.5, 7, 14, 28 for patch 14), as the
ViTDet pyramid does, with DPT's layers instead of ViTDet's.

transformers' ``DPTReassembleStage`` takes token sequences and splits off the class token
first; segzoo's backbone already returns maps without it, which is the stage's
``readout_type="ignore"``: the readout token is not used (as in Depth Anything's DINOv2
decoders). The layers themselves, and so the weights, are transformers'.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DPTConfig
from transformers.models.dpt.modeling_dpt import DPTReassembleLayer

__all__ = ["REASSEMBLE_FACTORS", "DPTReassemble", "dpt_reassemble_config"]

REASSEMBLE_FACTORS = (4, 2, 1, 0.5)


def dpt_reassemble_config(embed_dim: int) -> DPTConfig:
    """The ``DPTConfig`` of the reassemble stage for a ViT of width ``embed_dim``.

    Channels ``embed_dim/4, /2, x1, x1`` (DPT-Large's 256, 512, 1024, 1024 on a ViT-L; the
    same widths as the pyramid neck, so every head fits either)."""
    sizes = [max(embed_dim // 4, 1), max(embed_dim // 2, 1), embed_dim, embed_dim]
    return DPTConfig(hidden_size=embed_dim, neck_hidden_sizes=sizes, reassemble_factors=list(REASSEMBLE_FACTORS),
                     readout_type="ignore")


class DPTReassemble(nn.Module):
    """Four same-stride ViT maps -> maps at 4x, 2x, 1x and 0.5x their resolution (DPT's layers)."""

    def __init__(self, in_channels: list[int]):
        super().__init__()
        if len(in_channels) != 4 or len(set(in_channels)) != 1:
            raise ValueError(
                f"the DPT reassemble neck takes the four equally wide maps of a plain ViT, got widths {in_channels}; "
                "use neck='pyramid' or neck='none' for other layouts"
            )
        config = dpt_reassemble_config(in_channels[0])
        self.layers = nn.ModuleList(
            DPTReassembleLayer(config, channels=channels, factor=factor)
            for channels, factor in zip(config.neck_hidden_sizes, config.reassemble_factors)
        )
        self.out_channels = list(config.neck_hidden_sizes)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        # contiguous: the ViT's maps are permuted views of its tokens (see the pyramid neck)
        return [layer(f.contiguous()) for layer, f in zip(self.layers, features)]
