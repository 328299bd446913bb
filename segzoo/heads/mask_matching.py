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

Both take a ``valid`` map (``(B, H, W)``, 1 where a target pixel counts, 0 at ignored pixels):
a sampled point's weight is the share of its valid neighbours (:func:`point_weights`) and its
target their bilinear average, so ignored pixels enter no cost, no loss and no choice of
uncertain points. Where nothing is ignored the computation is transformers'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from scipy.optimize import linear_sum_assignment
from transformers.models.mask2former.modeling_mask2former import Mask2FormerHungarianMatcher

__all__ = ["BatchedHungarianMatcher", "point_mask_losses", "point_weights", "sample_targets"]

# keeps a division by a sum of point weights finite where every weight is 0 (the sum above it is 0 too)
_TINY = 1e-12


class BatchedHungarianMatcher(Mask2FormerHungarianMatcher):
    """Drop-in replacement for transformers' matcher (same arguments, same result)."""

    @torch.no_grad()
    def forward(
        self,
        masks_queries_logits: torch.Tensor,
        class_queries_logits: torch.Tensor,
        mask_labels: list[torch.Tensor],
        class_labels: list[torch.Tensor],
        valid: torch.Tensor | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(query indices, target indices)`` per image, as transformers returns them; ``valid``
        (``(B, H, W)`` at the targets' size) leaves the pixels where it is 0 out of every cost."""
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
        sampled_targets, weights = sample_targets(targets, grid, valid)  # (B, K, P), (B, 1, P) or None

        probabilities = class_queries_logits.softmax(-1)
        cost_class = -probabilities.gather(2, labels[:, None, :].expand(-1, num_queries, -1))
        cost_mask = _pair_wise_sigmoid_cross_entropy(predicted, sampled_targets, weights)
        cost_dice = _pair_wise_dice(predicted, sampled_targets, weights)
        cost = self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice
        # as transformers: invalid costs become the largest value, matched only when nothing else can be
        largest = torch.finfo(cost.dtype).max
        cost = torch.nan_to_num(cost, nan=largest, posinf=largest, neginf=largest).cpu()  # the one host copy
        matches = []
        for index, count in enumerate(counts):
            rows, cols = linear_sum_assignment(cost[index, :, :count].numpy())
            matches.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return matches


def sample_targets(
    targets: torch.Tensor, grid: torch.Tensor, valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Target masks ``(N, K, H, W)`` at grid_sample points ``(N, P, 1, 2)`` -> ``(N, K, P)`` and the
    points' weights ``(N, 1, P)`` (``None`` without ``valid``, ``(N, H, W)``).

    A point none of whose four neighbours is ignored keeps transformers' target and weight 1
    exactly; a point next to ignored pixels gets the bilinear average over its valid neighbours
    and their share as weight (0 where every neighbour is ignored).
    """
    sampled = F.grid_sample(targets if valid is None else targets * valid[:, None], grid, align_corners=False)
    if valid is None:
        return sampled.squeeze(3), None
    weights = point_weights(valid, grid)
    divisor = torch.where(weights < 1, weights.clamp_min(_TINY), 1.0)
    return sampled.squeeze(3) / divisor, weights


def point_weights(valid: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``(N, 1, P)`` weights of grid_sample points over a ``(N, H, W)`` valid map: 1 exactly where
    no neighbour is ignored (out-of-image neighbours count as valid, as in transformers' zero
    padding), 0 exactly where every one inside the image is, else the valid neighbours' share."""
    valid = valid[:, None].to(grid.dtype)
    ignored_share = F.grid_sample(1 - valid, grid, align_corners=False).squeeze(3)
    valid_share = F.grid_sample(valid, grid, align_corners=False).squeeze(3)
    return torch.where(ignored_share > 0, valid_share, 1.0)


def zero_ignored_points(weights: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """Weighted points' logits: an ignored point's value must not reach a sum (0 * inf is nan)."""
    return logits if weights is None else torch.where(weights > 0, logits, 0.0)


def _pair_wise_sigmoid_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, Q, P)`` mask logits x ``(B, K, P)`` targets -> ``(B, Q, K)`` mean BCE over the points
    (weighted by ``(B, 1, P)`` ``weights`` when given)."""
    logits = zero_ignored_points(weights, logits)
    positive = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    negative = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    if weights is None:
        points = logits.shape[-1]
        return (positive / points) @ targets.mT + (negative / points) @ (1 - targets).mT
    total = weights.sum(-1, keepdim=True).clamp_min(_TINY)  # the point count when nothing is ignored
    return (positive * weights / total) @ targets.mT + (negative * weights / total) @ (1 - targets).mT


def _pair_wise_dice(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, Q, P)`` mask logits x ``(B, K, P)`` targets -> ``(B, Q, K)`` dice loss (smoothing 1)."""
    probabilities = zero_ignored_points(weights, logits).sigmoid()
    if weights is not None:
        probabilities, targets_sum = probabilities * weights, (targets * weights).sum(-1)
    else:
        targets_sum = targets.sum(-1)
    numerator = 2 * probabilities @ targets.mT
    denominator = probabilities.sum(-1)[..., :, None] + targets_sum[..., None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def point_mask_losses(
    criterion: nn.Module,
    masks_queries_logits: torch.Tensor,
    mask_labels: list[torch.Tensor],
    indices: list[tuple[torch.Tensor, torch.Tensor]],
    num_masks: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """transformers' ``loss_masks`` (``Mask2FormerLoss``, ``EomtLoss``: mask BCE and dice of each
    matched query at ``criterion.num_points`` points, most of them the most uncertain of an
    oversampled draw) with ``valid`` leaving ignored pixels out: their points weigh 0 and are
    never chosen as uncertain. Draws the same random points in the same order."""
    src_idx = criterion._get_predictions_permutation_indices(indices)
    tgt_idx = criterion._get_targets_permutation_indices(indices)
    pred_masks = masks_queries_logits[src_idx][:, None]
    target_masks = criterion._pad_images_to_max_in_batch(mask_labels)[0][tgt_idx][:, None]
    valid_masks = valid[tgt_idx[0]] if valid is not None else None  # each matched mask's image's valid map

    with torch.no_grad():
        grid = _uncertain_points(criterion, pred_masks, valid_masks)
        point_labels, weights = sample_targets(target_masks, grid, valid_masks)
    point_logits = F.grid_sample(pred_masks, grid, align_corners=False).squeeze(3)  # (N, 1, P)
    point_labels, point_logits = point_labels[:, 0], zero_ignored_points(weights, point_logits)[:, 0]
    weights = weights[:, 0] if weights is not None else torch.ones_like(point_logits)

    bce = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none")
    if valid is None:
        loss_mask = bce.mean(1).sum() / num_masks  # transformers' float operations, for exact parity
    else:
        loss_mask = ((bce * weights).sum(1) / weights.sum(1).clamp_min(_TINY)).sum() / num_masks
    probabilities = point_logits.sigmoid() * weights
    numerator = 2 * (probabilities * point_labels).sum(-1)
    denominator = probabilities.sum(-1) + (point_labels * weights).sum(-1)
    loss_dice = (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks
    return {"loss_mask": loss_mask, "loss_dice": loss_dice}


def _uncertain_points(criterion: nn.Module, pred_masks: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """transformers' ``sample_points_using_uncertainty`` (the ``importance_sample_ratio`` share of
    the points: the oversampled ones with logits closest to 0; the rest uniform), as a
    grid_sample grid ``(N, P, 1, 2)``; points on ignored pixels rank last."""
    num_masks, device = pred_masks.shape[0], pred_masks.device
    num_points = criterion.num_points
    candidates = torch.rand(num_masks, int(num_points * criterion.oversample_ratio), 2, device=device)
    grid = (2.0 * candidates - 1.0).unsqueeze(2)
    uncertainty = -F.grid_sample(pred_masks, grid, align_corners=False).squeeze(3)[:, 0].abs()
    if valid is not None:
        uncertainty = uncertainty.masked_fill(point_weights(valid, grid)[:, 0] == 0, float("-inf"))
    num_uncertain = int(criterion.importance_sample_ratio * num_points)
    chosen = torch.topk(uncertainty, k=num_uncertain, dim=1)[1]
    points = candidates.gather(1, chosen[..., None].expand(-1, -1, 2))
    if num_points > num_uncertain:
        points = torch.cat([points, torch.rand(num_masks, num_points - num_uncertain, 2, device=device)], dim=1)
    return (2.0 * points - 1.0).unsqueeze(2)
