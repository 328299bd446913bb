"""MaskClassificationSegmenter: a Segmenter whose head predicts (class, mask) pairs.

The zoo contract for models trained with their own loss:

- ``train()``: ``forward`` returns the head's raw outputs (a dict; for Mask2Former
  ``class_queries_logits``, ``masks_queries_logits``, ``auxiliary_outputs``), and
  ``compute_loss(outputs, target, ignore_index=255)`` with ``target`` the ``(B, H, W)``
  class ids of the input returns the scalar training loss.
- ``eval()``: ``forward`` returns ``(B, num_classes, H, W)`` semantic logits like every
  zoo model, so softmax/argmax consumers (nnU-Net's predictor included) work unchanged.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..heads.mask2former import label_map_to_mask_targets
from ..losses import check_target
from .segmenter import Segmenter

__all__ = ["MaskClassificationSegmenter"]

# added to every class score before normalising: keeps log() finite and turns a pixel no
# query claims into a uniform distribution instead of 0/0
_SCORE_FLOOR = 1e-6


class MaskClassificationSegmenter(Segmenter):
    """Backbone -> neck -> mask-classification head (Mask2Former).

    In ``eval()`` the logits are **log-probabilities**: the head's semantic scores
    ``s_c = sum_q P_q(c) * sigmoid(mask_q)`` (Mask2Former's semantic inference) are
    upsampled bilinearly to the input, normalised over classes and logged, so
    ``logits.exp().sum(1) == 1``, ``logits.softmax(1) == logits.exp()`` and
    ``logits.argmax(1)`` is Mask2Former's semantic prediction.
    """

    def forward(self, x: torch.Tensor) -> Any:
        self._check_input(x)
        height, width = x.shape[-2:]
        padded = self._pad_to_patch_multiple(x)
        outputs = self.forward_set_predictions(padded)
        if self.training:
            return outputs
        scores = self.decode_head.semantic_probabilities(outputs)
        scores = F.interpolate(scores, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        scores = scores[..., :height, :width] + _SCORE_FLOOR
        # computed in float32 (the head's softmax/sigmoid), returned in the head's precision like the other heads
        return (scores / scores.sum(dim=1, keepdim=True)).log().to(outputs["masks_queries_logits"].dtype)

    def forward_set_predictions(self, padded: torch.Tensor) -> dict[str, Any]:
        """The head's raw outputs for an input already padded to whole patches."""
        return self.decode_head(self.neck(self.backbone(padded)))

    def compute_loss(self, outputs: Any, target: torch.Tensor, ignore_index: int | None = 255) -> torch.Tensor:
        """Set-prediction loss of train-mode ``outputs`` against per-pixel class ids: the
        Hungarian-matched class cross-entropy, mask BCE and mask Dice (weights 2, 5, 5), of the
        final prediction and of each earlier one with ``deep_supervision``.

        Args:
            outputs: what ``forward`` returned in ``train()`` mode.
            target: integer class ids ``(B, H, W)`` (or ``(B, 1, H, W)``) at the input size,
                values in ``[0, num_classes)`` or ``ignore_index``.
            ignore_index: label of the pixels left out of the matching costs, the point sampling
                and the mask losses (``None``: every pixel must be a class id).

        The target is padded like the input; padded pixels belong to no class mask (as in
        Mask2Former's own padding), then each image's classes become one binary mask each.
        """
        if not isinstance(outputs, dict) or "masks_queries_logits" not in outputs:
            raise TypeError(
                "compute_loss needs the outputs of a forward pass in train() mode (a dict with "
                f"'masks_queries_logits'), got {type(outputs).__name__}; call model.train() before the forward pass "
                "(in eval() the model returns per-pixel log-probabilities, for inference)"
            )
        masks = outputs["masks_queries_logits"]
        target = check_target(target, self.num_classes, ignore_index, batch_size=masks.shape[0])
        pad_h = -target.shape[-2] % self.pad_multiple
        pad_w = -target.shape[-1] % self.pad_multiple
        if pad_h or pad_w:
            target = F.pad(target, (0, pad_w, 0, pad_h), value=-1)
        valid = (target != ignore_index).float() if ignore_index is not None else None
        mask_labels, class_labels = label_map_to_mask_targets(target, self.num_classes)
        losses = self.decode_head.loss_components(outputs, mask_labels, class_labels, valid)
        return torch.stack(list(losses.values())).sum()

    def forward_head(self, features: Sequence[torch.Tensor], pre_logits: bool = False) -> dict[str, Any]:
        """The head's set predictions from ``forward_features``' maps: the dict ``forward``
        returns in ``train()`` (masks at the finest map's resolution; in ``eval()`` ``forward``
        turns them into per-pixel log-probabilities). ``pre_logits`` has no per-pixel meaning
        here: the class predictor reads one embedding per query, not per pixel."""
        if pre_logits:
            raise NotImplementedError(
                f"{type(self).__name__} classifies queries, not pixels: there are no per-pixel features before its "
                "classifier; use forward_features for the backbone's maps or forward_head(features) for the set "
                "predictions"
            )
        return self.decode_head(features)
