"""SegFormer's all-MLP decode head (Xie et al. 2021), reused from transformers."""

from __future__ import annotations

from transformers import SegformerConfig
from transformers.models.segformer.modeling_segformer import SegformerDecodeHead

from .._validation import positive_int

__all__ = ["create_segformer_head"]


def create_segformer_head(
    in_channels: list[int],
    num_classes: int,
    decoder_hidden_size: int = 256,
    dropout: float = 0.1,
) -> SegformerDecodeHead:
    """transformers' ``SegformerDecodeHead`` for feature maps with ``in_channels``.

    It projects each map to ``decoder_hidden_size``, upsamples all to the first
    (highest-resolution) map, fuses them and classifies: logits come out at the first
    map's resolution.
    """
    decoder_hidden_size = positive_int("decoder_hidden_size", decoder_hidden_size, "the head's width")
    config = SegformerConfig(
        num_encoder_blocks=len(in_channels),
        hidden_sizes=list(in_channels),
        decoder_hidden_size=decoder_hidden_size,
        num_labels=num_classes,
        classifier_dropout_prob=dropout,
    )
    return SegformerDecodeHead(config)
