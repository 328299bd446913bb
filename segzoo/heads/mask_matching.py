"""Hungarian matching of Mask2Former's queries to the target masks, one batch at a time.

transformers' ``Mask2FormerHungarianMatcher`` builds the cost matrix of each image in
turn and copies each to the host for SciPy's assignment: with deep supervision that is
``decoder_layers x batch`` small device computations and host synchronisations per
training step. :class:`BatchedHungarianMatcher` computes the costs of the whole batch
in one pass on the device (padding images to the largest target count) and copies them
to the host once per call. Costs, point sampling and the random points drawn are
transformers', batched (its pair-wise cost functions are written for one image; under
``torch.vmap`` they decompose into slower elementwise ops), so the assignment and the
loss are the same (tested against it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from transformers.models.mask2former.modeling_mask2former import Mask2FormerHungarianMatcher

__all__ = ["BatchedHungarianMatcher"]


class BatchedHungarianMatcher(Mask2FormerHungarianMatcher):
    """Drop-in replacement for transformers' matcher (same arguments, same result)."""

    @torch.no_grad()
    def forward(
        self,
        masks_queries_logits: torch.Tensor,
        class_queries_logits: torch.Tensor,
        mask_labels: list[torch.Tensor],
        class_labels: list[torch.Tensor],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(query indices, target indices)`` per image, as transformers returns them."""
        batch_size, num_queries = masks_queries_logits.shape[:2]
        device = masks_queries_logits.device
        counts = [len(classes) for classes in class_labels]
        # one draw per image, in transformers' order, so a seeded run samples the same points
        points = torch.cat([torch.rand(1, self.num_points, 2, device=device) for _ in range(batch_size)])
        grid = (2.0 * points - 1.0).unsqueeze(2)  # (B, P, 1, 2): grid_sample's [-1, 1] coordinates
        predicted = F.grid_sample(masks_queries_logits, grid, align_corners=False).squeeze(3)  # (B, Q, P)

        max_targets = max(counts) if counts else 0
        if max_targets == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return [(empty, empty) for _ in range(batch_size)]
        targets = masks_queries_logits.new_zeros(batch_size, max_targets, *mask_labels[0].shape[-2:])
        labels = torch.zeros(batch_size, max_targets, dtype=torch.int64, device=device)
        for index, (masks, classes) in enumerate(zip(mask_labels, class_labels)):
            targets[index, : len(classes)] = masks.to(targets)
            labels[index, : len(classes)] = classes
        sampled_targets = F.grid_sample(targets, grid, align_corners=False).squeeze(3)  # (B, K, P)

        probabilities = class_queries_logits.softmax(-1)
        cost_class = -probabilities.gather(2, labels[:, None, :].expand(-1, num_queries, -1))
        cost_mask = _pair_wise_sigmoid_cross_entropy(predicted, sampled_targets)
        cost_dice = _pair_wise_dice(predicted, sampled_targets)
        cost = self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice
        # as transformers: invalid costs become the largest value, matched only when nothing else can be
        largest = torch.finfo(cost.dtype).max
        cost = torch.nan_to_num(cost, nan=largest, posinf=largest, neginf=largest).cpu()  # the one host copy
        matches = []
        for index, count in enumerate(counts):
            rows, cols = linear_sum_assignment(cost[index, :, :count].numpy())
            matches.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return matches


def _pair_wise_sigmoid_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(B, Q, P)`` mask logits x ``(B, K, P)`` targets -> ``(B, Q, K)`` mean BCE over the points."""
    points = logits.shape[-1]
    positive = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    negative = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (positive / points) @ targets.mT + (negative / points) @ (1 - targets).mT


def _pair_wise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(B, Q, P)`` mask logits x ``(B, K, P)`` targets -> ``(B, Q, K)`` dice loss (smoothing 1)."""
    probabilities = logits.sigmoid()
    numerator = 2 * probabilities @ targets.mT
    denominator = probabilities.sum(-1)[..., :, None] + targets.sum(-1)[..., None, :]
    return 1 - (numerator + 1) / (denominator + 1)
