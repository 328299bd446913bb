"""DPT's decoder (Ranftl et al. 2021, "Vision Transformers for Dense Prediction"): fusion
blocks and the semantic-segmentation head, reused from transformers.

transformers' ``DPTNeck`` is reassemble + one 3x3 convolution per map + fusion. In the zoo
the reassemble stage is the ``"dpt"`` neck (:mod:`segzoo.necks.dpt`), since resampling a
plain ViT's maps is what necks do; this head holds the rest: the 3x3 convolutions (plain
``nn.Conv2d``, as in ``DPTNeck``), ``DPTFeatureFusionStage`` and
``DPTSemanticSegmentationHead``. The computation is transformers' own, which
``tests/test_dpt.py`` checks against ``DPTNeck`` + ``DPTSemanticSegmentationHead``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from transformers import DPTConfig
from transformers.models.dpt.modeling_dpt import DPTFeatureFusionStage, DPTSemanticSegmentationHead

from .._validation import positive_int

__all__ = ["DPTDecodeHead", "create_dpt_head"]

_CLASSIFIER_INDEX = 4  # the 1x1 convolution in DPTSemanticSegmentationHead's Sequential


class DPTDecodeHead(nn.Module):
    """Maps (finest first) -> 3x3 convolutions to ``fusion_hidden_size`` -> fusion, coarsest
    to finest (each step upsamples x2) -> 3x3 conv, BatchNorm, ReLU, dropout, 1x1 classifier,
    x2 upsampling. Logits come out at 4x the finest map's resolution: the input resolution
    for a patch-16 ViT with the ``"dpt"`` or ``"pyramid"`` neck (the Segmenter resamples
    whatever differs)."""

    def __init__(self, config: DPTConfig):
        super().__init__()
        self.config = config
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, config.fusion_hidden_size, kernel_size=3, padding=1, bias=False)
            for channels in config.neck_hidden_sizes
        )
        self.fusion_stage = DPTFeatureFusionStage(config)
        # the coarsest fusion layer has no residual input, so its residual unit never runs:
        # removed, so DDP needs no find_unused_parameters and every parameter trains
        del self.fusion_stage.layers[0].residual_layer1
        self.head = DPTSemanticSegmentationHead(config)
        if not (isinstance(self.classifier, nn.Conv2d) and self.classifier.out_channels == config.num_labels):
            raise RuntimeError(
                "transformers' DPTSemanticSegmentationHead no longer has its 1x1 classifier at head.head[4]; "
                "update segzoo.heads.dpt._CLASSIFIER_INDEX for the installed transformers version"
            )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        projected = [conv(feature) for conv, feature in zip(self.convs, features)]
        return self.head(self.fusion_stage(projected))

    @property
    def classifier(self) -> nn.Conv2d:
        """The final 1x1 per-class convolution (inside transformers' head)."""
        return self.head.head[_CLASSIFIER_INDEX]

    def get_classifier(self) -> nn.Conv2d:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised 1x1 classifier for ``num_classes``; every other weight stays."""
        old = self.classifier
        self.head.head[_CLASSIFIER_INDEX] = nn.Conv2d(old.in_channels, num_classes, kernel_size=1,
                                                      device=old.weight.device, dtype=old.weight.dtype)
        self.config.num_labels = num_classes


def create_dpt_head(
    in_channels: list[int],
    num_classes: int,
    decoder_hidden_size: int = 256,
    dropout: float = 0.1,
) -> DPTDecodeHead:
    """DPT's decoder for feature maps with ``in_channels`` (finest first).

    ``decoder_hidden_size`` is DPT's ``fusion_hidden_size`` (256 in every published DPT);
    ``dropout`` is the segmentation head's (transformers' ``semantic_classifier_dropout``).
    """
    decoder_hidden_size = positive_int("decoder_hidden_size", decoder_hidden_size, "the fusion blocks' width")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}; DPT's default is 0.1")
    config = DPTConfig(
        neck_hidden_sizes=list(in_channels),
        fusion_hidden_size=decoder_hidden_size,
        num_labels=num_classes,
        semantic_classifier_dropout=float(dropout),
        readout_type="ignore",
        use_auxiliary_head=False,
    )
    return DPTDecodeHead(config)
