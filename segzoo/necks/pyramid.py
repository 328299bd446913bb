"""Simple feature pyramid (ViTDet, Li et al. 2022) for plain ViTs.

A plain ViT has one stride ``p`` (14 or 16) at every depth; decoders built for
hierarchical encoders want strides 4/8/16/32. Each of the four ViT maps is resampled
by a fixed factor: x4 (two stride-2 transposed convs), x2, x1, x0.5 (max-pool, rounding
up so a one-patch input still works), so a
patch-16 backbone gives strides 4, 8, 16, 32 (3.5, 7, 14, 28 for patch 14).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

__all__ = ["SimpleFeaturePyramid"]


def _upsample_x2(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)


class HalveMaxPool(nn.Module):
    """2x2 max-pool, stride 2, that keeps a last odd row/column (``ceil_mode`` semantics).

    Odd sides are padded with ``-inf`` before an ordinary pool instead of using
    ``MaxPool2d(ceil_mode=True)``, whose inductor lowering derives the output size
    through symbolic conditions; whole-model compilation of ViT + pyramid once crashed
    inside such a condition on torch 2.11 (``'StrictLessThan' object has no attribute
    'diff'``). At a fixed, even size the pad amounts are 0 and no pad is traced at all.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = x.shape[-2] % 2, x.shape[-1] % 2
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), value=float("-inf"))
        return F.max_pool2d(x, kernel_size=2, stride=2)


class SimpleFeaturePyramid(nn.Module):
    """Four same-stride ViT maps -> maps at 4x, 2x, 1x and 0.5x their resolution.

    Channels shrink where resolution grows (``dim/4, dim/2, dim, dim``), as in ViTDet,
    so the high-resolution levels stay cheap; each level ends in a channel LayerNorm
    because late ViT blocks emit features of very different scales.
    """

    def __init__(self, in_channels: list[int]):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"SimpleFeaturePyramid needs 4 input maps, got {len(in_channels)}")
        dims = in_channels
        quarter, half = max(dims[0] // 4, 1), max(dims[1] // 2, 1)
        self.levels = nn.ModuleList(
            [
                nn.Sequential(
                    _upsample_x2(dims[0], max(dims[0] // 2, 1)),
                    LayerNorm2d(max(dims[0] // 2, 1)),
                    nn.GELU(),
                    _upsample_x2(max(dims[0] // 2, 1), quarter),
                    LayerNorm2d(quarter),
                ),
                nn.Sequential(_upsample_x2(dims[1], half), LayerNorm2d(half)),
                nn.Sequential(LayerNorm2d(dims[2])),
                nn.Sequential(HalveMaxPool(), LayerNorm2d(dims[3])),
            ]
        )
        self.out_channels = [quarter, half, dims[2], dims[3]]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        # the ViT's maps are permuted views of its token sequence; contiguous maps give the
        # convolutions the same input layout whether the neck runs alone or after the backbone
        return [level(f.contiguous()) for level, f in zip(self.levels, features)]
