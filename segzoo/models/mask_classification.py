"""MaskClassificationSegmenter: a Segmenter whose head predicts (class, mask) pairs.

The zoo contract for models trained with their own loss:

- ``train()``: ``forward`` returns the head's raw outputs (a dict; for Mask2Former
  ``class_queries_logits``, ``masks_queries_logits``, ``auxiliary_outputs``), and
  ``compute_loss(outputs, target)`` with ``target`` the ``(B, H, W)`` class ids of the
  input returns the scalar training loss.
- ``eval()``: ``forward`` returns ``(B, num_classes, H, W)`` semantic logits like every
  zoo model, so softmax/argmax consumers (nnU-Net's predictor included) work unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..heads.mask2former import label_map_to_mask_targets
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

    def compute_loss(self, outputs: Any, target: torch.Tensor) -> torch.Tensor:
        """Set-prediction loss of train-mode ``outputs`` against per-pixel class ids.

        Args:
            outputs: what ``forward`` returned in ``train()`` mode.
            target: integer class ids ``(B, H, W)`` (or ``(B, 1, H, W)``) at the input size,
                values in ``[0, num_classes)``.

        The target is padded like the input; padded pixels belong to no class mask
        (as in Mask2Former's own padding), then each image's classes become one binary
        mask each for the Hungarian-matched mask + dice + class losses.
        """
        if not isinstance(outputs, dict) or "masks_queries_logits" not in outputs:
            raise TypeError(
                "compute_loss needs the outputs of a forward pass in train() mode (a dict with "
                f"'masks_queries_logits'), got {type(outputs).__name__}; call model.train() before the forward pass"
            )
        target = self._check_target(target, outputs["masks_queries_logits"].shape[0])
        pad_h = -target.shape[-2] % self.pad_multiple
        pad_w = -target.shape[-1] % self.pad_multiple
        if pad_h or pad_w:
            target = F.pad(target, (0, pad_w, 0, pad_h), value=-1)
        mask_labels, class_labels = label_map_to_mask_targets(target, self.num_classes)
        losses = self.decode_head.loss_components(outputs, mask_labels, class_labels)
        return torch.stack(list(losses.values())).sum()

    def _check_target(self, target: torch.Tensor, batch_size: int) -> torch.Tensor:
        if not isinstance(target, torch.Tensor):
            raise TypeError(f"target must be a torch.Tensor of class ids (B, H, W), got {type(target).__name__}")
        if target.ndim == 4 and target.shape[1] == 1:
            target = target[:, 0]
        if target.ndim != 3 or target.shape[0] != batch_size:
            raise ValueError(
                f"target must hold class ids of shape (B, H, W) with B={batch_size}, got shape {tuple(target.shape)}"
            )
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must be an integer tensor of class ids, got {target.dtype}; use target.long()")
        low, high = torch.stack([target.min(), target.max()]).tolist()  # one host copy
        if low < 0 or high >= self.num_classes:
            raise ValueError(
                f"target class ids must lie in [0, {self.num_classes - 1}] for num_classes={self.num_classes}, "
                f"got values in [{low}, {high}]"
            )
        return target.long()
