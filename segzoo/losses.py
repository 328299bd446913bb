"""Per-pixel training loss of the zoo's dense heads, and the target checks every head shares.

:func:`dice_ce_loss` is the loss nnU-Net trains its U-Nets with (``DC_and_CE_loss`` with the
trainer's settings): cross-entropy plus soft Dice over the softmax, Dice over the whole batch
(``batch_dice``) and over the foreground classes only, smoothing ``1e-5``. Pixels labelled
``ignore_index`` count in neither term. It is written here from those facts so that the zoo
does not depend on nnU-Net; ``tests/test_losses.py`` checks it against nnU-Net's own class.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DiceCELoss", "check_target", "dice_ce_loss", "soft_dice"]

# how many offending values an error message lists
_SHOWN_VALUES = 8


def check_target(
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int | None = 255,
    batch_size: int | None = None,
) -> torch.Tensor:
    """``target`` as ``(B, H, W)`` int64 class ids, after checking what a loss needs of it.

    Takes ``(B, H, W)`` or ``(B, 1, H, W)`` integer tensors whose values are class ids in
    ``[0, num_classes)`` or ``ignore_index``; anything else is refused with the offending values.
    """
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor of class ids (B, H, W), got {type(target).__name__}")
    if target.ndim == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if target.ndim != 3 or (batch_size is not None and target.shape[0] != batch_size):
        batch = f" with B={batch_size}" if batch_size is not None else ""
        raise ValueError(
            f"target must hold class ids of shape (B, H, W){batch} or (B, 1, H, W), got shape {tuple(target.shape)}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must be an integer tensor of class ids, got {target.dtype}; use target.long()")
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index={ignore_index} is a class id for num_classes={num_classes}; pass an ignore_index outside "
            f"[0, {num_classes - 1}] (255 by default), or None when the targets have no ignored pixels"
        )
    target = target.long()
    allowed = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        allowed |= target == ignore_index
    if not bool(allowed.all()):  # the one host synchronisation of a valid target
        values = target[~allowed].unique()
        shown = ", ".join(str(v) for v in values[:_SHOWN_VALUES].tolist())
        more = f" (and {len(values) - _SHOWN_VALUES} more)" if len(values) > _SHOWN_VALUES else ""
        ignored = f" nor ignore_index={ignore_index}" if ignore_index is not None else " (ignore_index=None)"
        raise ValueError(
            f"target holds {shown}{more}: neither class ids in [0, {num_classes - 1}] for num_classes={num_classes}"
            f"{ignored}; map those pixels to a class or to the ignore index, or pass ignore_index=<their value>"
        )
    return target


def soft_dice(
    probabilities: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    batch_dice: bool = True,
    do_bg: bool = False,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """Mean soft Dice of ``(B, C, H, W)`` probabilities against ``(B, H, W)`` class ids
    (nnU-Net's ``MemoryEfficientSoftDiceLoss`` returns its negative).

    ``valid`` (``(B, H, W)`` bool) leaves the other pixels out of every sum; ``batch_dice`` sums
    over the batch before dividing (one Dice per class, not per image and class); ``do_bg=False``
    leaves class 0 out of the mean.
    """
    classes = target if valid is None else torch.where(valid, target, 0)  # an ignored pixel's id is out of range
    one_hot = torch.zeros_like(probabilities).scatter_(1, classes[:, None], 1.0)
    if valid is not None:
        mask = valid[:, None].to(probabilities.dtype)
        one_hot = one_hot * mask
        probabilities = probabilities * mask
    if not do_bg:
        one_hot, probabilities = one_hot[:, 1:], probabilities[:, 1:]
    axes = (0, 2, 3) if batch_dice else (2, 3)
    intersection = (probabilities * one_hot).sum(axes, dtype=torch.float32)
    total = probabilities.sum(axes, dtype=torch.float32) + one_hot.sum(axes, dtype=torch.float32)
    return ((2 * intersection + smooth) / (total + smooth).clamp_min(1e-8)).mean()


def dice_ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int | None = 255,
    class_weights: Sequence[float] | torch.Tensor | None = None,
    weight_ce: float = 1.0,
    weight_dice: float = 1.0,
    batch_dice: bool = True,
    do_bg: bool = False,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """nnU-Net's ``DC_and_CE_loss``: ``weight_ce * CE - weight_dice * soft Dice``.

    Args:
        logits: ``(B, C, H, W)`` per-pixel logits.
        target: ``(B, H, W)`` or ``(B, 1, H, W)`` integer class ids at the logits' size.
        ignore_index: the label of pixels that count in neither term (``None``: every pixel counts).
        class_weights: ``C`` weights of the cross-entropy term (the Dice term is unweighted).
        batch_dice, do_bg, smooth: the Dice term's settings (nnU-Net's 2D defaults).

    Like nnU-Net's, the Dice term enters negated, so the loss reaches ``-weight_dice`` at best.
    A batch whose pixels are all ignored gives ``-weight_dice`` (the Dice of empty sets is 1)
    and no gradient.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"dice_ce_loss takes the (B, C, H, W) logits tensor, got {type(logits).__name__}; set-prediction "
            "outputs (a dict) train with their model's compute_loss"
        )
    if logits.ndim != 4:
        raise ValueError(f"logits must have shape (B, C, H, W), got {tuple(logits.shape)}")
    target = check_target(target, logits.shape[1], ignore_index, batch_size=logits.shape[0])
    if target.shape[-2:] != logits.shape[-2:]:
        raise ValueError(
            f"target size {tuple(target.shape[-2:])} differs from the logits' {tuple(logits.shape[-2:])}; "
            "pass the class ids of the input the model saw (the models return logits at the input size)"
        )
    logits = logits.float()  # softmax and sums in float32 under autocast, as nnU-Net's loss is
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
        if weight.shape != (logits.shape[1],):
            raise ValueError(
                f"class_weights must hold one weight per class ({logits.shape[1]}), got shape {tuple(weight.shape)}"
            )
    valid = target != ignore_index if ignore_index is not None else None
    loss = logits.new_zeros(())
    if weight_ce:
        loss = loss + weight_ce * _cross_entropy(logits, target, valid, weight)
    if weight_dice:
        dice = soft_dice(logits.softmax(1), target, valid, batch_dice=batch_dice, do_bg=do_bg, smooth=smooth)
        loss = loss - weight_dice * dice
    return loss


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None,
                   weight: torch.Tensor | None) -> torch.Tensor:
    """torch's (weighted) mean cross-entropy over the counted pixels, and 0 where none counts
    (nnU-Net skips the term then; torch's mean would be 0/0), without a host synchronisation."""
    if valid is None:
        return F.cross_entropy(logits, target, weight=weight)
    classes = torch.where(valid, target, 0)
    per_pixel = F.cross_entropy(logits, classes, weight=weight, reduction="none")
    counts = valid.to(per_pixel.dtype) if weight is None else weight[classes] * valid
    return (per_pixel * valid).sum() / counts.sum().clamp_min(torch.finfo(per_pixel.dtype).tiny)


class DiceCELoss(nn.Module):
    """:func:`dice_ce_loss` as a module, with its settings fixed at construction."""

    def __init__(self, ignore_index: int | None = 255, class_weights: Sequence[float] | torch.Tensor | None = None,
                 weight_ce: float = 1.0, weight_dice: float = 1.0, batch_dice: bool = True, do_bg: bool = False,
                 smooth: float = 1e-5):
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", None if class_weights is None else torch.as_tensor(
            class_weights, dtype=torch.float32))
        self.weight_ce, self.weight_dice = float(weight_ce), float(weight_dice)
        self.batch_dice, self.do_bg, self.smooth = bool(batch_dice), bool(do_bg), float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice_ce_loss(logits, target, self.ignore_index, self.class_weights, self.weight_ce, self.weight_dice,
                            self.batch_dice, self.do_bg, self.smooth)
