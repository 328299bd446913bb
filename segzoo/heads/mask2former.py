"""Mask2Former decode head (Cheng et al. 2022) from transformers' modules: the
multi-scale deformable-attention pixel decoder, the masked-attention transformer
decoder, the class predictor and the Hungarian-matched set loss.

Instead of per-pixel logits, the head predicts ``num_queries`` (class, mask) pairs.
:class:`~segzoo.models.MaskClassificationSegmenter` turns them into semantic logits
in ``eval()`` and exposes the loss for training.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerLoss,
    Mask2FormerPixelDecoder,
    Mask2FormerPreTrainedModel,
    Mask2FormerTransformerModule,
)

from .._validation import positive_int
from .mask_classifier import MaskClassifierMixin, MaskOutputs
from .mask_matching import BatchedHungarianMatcher

__all__ = ["Mask2FormerHead", "create_mask2former_head", "label_map_to_mask_targets"]



class OneChannelGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` with one channel per group that also takes a 1x1 map of one image.

    torch refuses a group of a single value, though the result is defined: the mean is the
    value and the variance 0, so every normalised value is 0 and the output is the bias
    (gradients follow the same formula). The pixel decoder's ``GroupNorm(32, width)`` has
    such groups at width 32, which a one-patch input reaches on its coarsest map.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.shape[2:].numel() == 1 and input.shape[0] == 1:
            bias = self.bias.view(1, -1, *([1] * (input.dim() - 2))) if self.affine else 0.0
            return input * 0.0 + bias
        return super().forward(input)


class Mask2FormerHead(MaskClassifierMixin, Mask2FormerPreTrainedModel):
    """Feature pyramid (finest map first) -> ``num_queries`` class logits and mask logits.

    A transformers ``PreTrainedModel`` only so that transformers' own Mask2Former weight
    initialisation applies (grid-initialised deformable sampling offsets, Xavier
    decoder layers, ...); it holds no backbone.

    ``forward`` returns a dict: ``class_queries_logits`` ``(B, Q, num_classes + 1)`` (the
    last class is "no object"), ``masks_queries_logits`` ``(B, Q, h, w)`` at the first
    map's resolution, and ``auxiliary_outputs``: the same pair from every earlier
    decoder layer (deep supervision), each a dict.
    """

    def __init__(self, config: Mask2FormerConfig, in_channels: Sequence[int]):
        super().__init__(config)
        self.num_classes = int(config.num_labels)
        self.pixel_decoder = Mask2FormerPixelDecoder(config, feature_channels=list(in_channels))
        self.transformer_module = Mask2FormerTransformerModule(in_features=config.feature_size, config=config)
        self.class_predictor = nn.Linear(config.hidden_dim, config.num_labels + 1)
        self.loss_weights = {
            "loss_cross_entropy": float(config.class_weight),
            "loss_mask": float(config.mask_weight),
            "loss_dice": float(config.dice_weight),
        }
        self.criterion = Mask2FormerLoss(config=config, weight_dict=self.loss_weights)
        # same costs and points as transformers' matcher, one batched cost matrix and host copy per call
        self.criterion.matcher = BatchedHungarianMatcher(
            cost_class=config.class_weight, cost_mask=config.mask_weight, cost_dice=config.dice_weight,
            num_points=config.train_num_points,
        )
        for module in self.pixel_decoder.modules():
            if type(module) is nn.GroupNorm and module.num_channels == module.num_groups:
                module.__class__ = OneChannelGroupNorm  # same parameters; takes one-patch inputs at width 32
        self.post_init()

    def forward(self, features: Sequence[torch.Tensor]) -> MaskOutputs:
        pixel = self.pixel_decoder(list(features), output_attentions=False, output_hidden_states=False)
        decoded = self.transformer_module(
            multi_scale_features=pixel.multi_scale_features,
            mask_features=pixel.mask_features,
            output_hidden_states=False,
            output_attentions=False,
        )
        class_logits = [self.class_predictor(h.transpose(0, 1)) for h in decoded.intermediate_hidden_states]
        mask_logits = list(decoded.masks_queries_logits)
        return {
            "class_queries_logits": class_logits[-1],
            "masks_queries_logits": mask_logits[-1],
            "auxiliary_outputs": [
                {"class_queries_logits": c, "masks_queries_logits": m}
                for c, m in zip(class_logits[:-1], mask_logits[:-1])
            ],
        }

    @property
    def auxiliary_loss(self) -> bool:
        """Whether the earlier predictions are supervised too (deep supervision)."""
        return self.config.use_auxiliary_loss


def create_mask2former_head(
    in_channels: list[int],
    num_classes: int,
    decoder_hidden_size: int = 256,
    num_queries: int = 100,
    decoder_layers: int = 10,
    encoder_layers: int = 6,
    num_attention_heads: int = 8,
    dim_feedforward: int = 2048,
    encoder_feedforward_dim: int = 1024,
    deep_supervision: bool = True,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    no_object_weight: float = 0.1,
    train_num_points: int = 12544,
) -> Mask2FormerHead:
    """Mask2Former head for 4 feature maps with ``in_channels`` (finest first).

    ``decoder_hidden_size`` is the width of the pixel decoder, the mask embeddings and
    the query decoder (256 in the paper; a multiple of 32 for its GroupNorms).
    ``decoder_layers`` counts as transformers does: the first mask prediction from the
    learned queries plus ``decoder_layers - 1`` masked-attention layers (10 = the paper's
    9 layers over 3 rounds of 3 scales). ``encoder_layers`` deformable-attention layers
    refine the 3 coarsest maps in the pixel decoder. The loss weights and point count
    are the paper's defaults.
    """
    if len(in_channels) != 4:
        raise ValueError(f"Mask2Former needs 4 feature maps (finest first), got {len(in_channels)}")
    if decoder_hidden_size < 32 or decoder_hidden_size % 32:
        raise ValueError(
            f"decoder_hidden_size must be a positive multiple of 32 (the pixel decoder uses GroupNorm(32, ...)), "
            f"got {decoder_hidden_size}"
        )
    if decoder_hidden_size % num_attention_heads:
        raise ValueError(
            f"decoder_hidden_size {decoder_hidden_size} must be divisible by num_attention_heads {num_attention_heads}"
        )
    num_queries = positive_int("num_queries", num_queries)
    decoder_layers = positive_int("decoder_layers", decoder_layers)
    encoder_layers = positive_int("encoder_layers", encoder_layers)
    config = Mask2FormerConfig(
        num_labels=num_classes,
        hidden_dim=decoder_hidden_size,
        feature_size=decoder_hidden_size,
        mask_feature_size=decoder_hidden_size,
        num_queries=num_queries,
        decoder_layers=decoder_layers,
        encoder_layers=encoder_layers,
        num_attention_heads=num_attention_heads,
        dim_feedforward=dim_feedforward,
        encoder_feedforward_dim=encoder_feedforward_dim,
        use_auxiliary_loss=deep_supervision,
        class_weight=class_weight,
        mask_weight=mask_weight,
        dice_weight=dice_weight,
        no_object_weight=no_object_weight,
        train_num_points=train_num_points,
        # the pixel decoder reads strides only to count its FPN levels: one (the finest map) on a 4/8/16/32 pyramid
        feature_strides=[4, 8, 16, 32],
        common_stride=4,
    )
    return Mask2FormerHead(config, in_channels)


def label_map_to_mask_targets(
    label_map: torch.Tensor, num_classes: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-pixel class ids ``(B, H, W)`` -> one binary mask per class present, per image.

    Returns ``mask_labels`` (list of ``(K_b, H, W)`` float) and ``class_labels`` (list of
    ``(K_b,)`` long), the layout Mask2Former's loss takes. Negative ids (padding) belong
    to no mask.
    """
    # which classes each image holds, found on the device and copied to the host once
    valid = (label_map >= 0) & (label_map < num_classes)
    ids = torch.where(valid, label_map, num_classes).flatten(1).long()
    present = torch.zeros(label_map.shape[0], num_classes + 1, dtype=torch.bool, device=label_map.device)
    present.scatter_(1, ids, True)
    mask_labels, class_labels = [], []
    for labels, row in zip(label_map, present[:, :num_classes].cpu()):
        classes = row.nonzero().flatten().to(label_map.device)
        mask_labels.append((labels[None] == classes[:, None, None]).float())
        class_labels.append(classes.long())
    return mask_labels, class_labels
