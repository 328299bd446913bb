"""What every mask-classification head (Mask2Former, EoMT) shares: a class predictor with a
"no object" output, its replacement for another class count, and semantic inference.

The heads subclass transformers' ``PreTrainedModel`` classes and mix this in first; they
provide ``class_predictor``, ``criterion`` (transformers' loss, with ``empty_weight`` and
``eos_coef``, whose matcher is a :class:`~segzoo.heads.mask_matching.BatchedHungarianMatcher`),
``loss_weights``, ``auxiliary_loss``, ``config`` and transformers' ``_init_weights``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._validation import positive_int
from .mask_matching import point_mask_losses

__all__ = ["MaskClassifierMixin", "MaskOutputs"]

MaskOutputs = dict[str, Any]  # class_queries_logits, masks_queries_logits, auxiliary_outputs


class MaskClassifierMixin:
    @classmethod
    def is_custom_code(cls) -> bool:
        # _init_weights is transformers' own, inherited unchanged; without this, transformers
        # treats a subclass outside its package as remote code and skips parent-module inits
        # (e.g. Mask2Former's deformable-attention sampling-offset grid).
        return False

    def get_classifier(self) -> nn.Linear:
        """The class predictor: ``num_classes + 1`` outputs, the last one "no object"."""
        return self.class_predictor

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh class predictor for ``num_classes`` classes plus "no object", initialised as
        transformers initialises it; the loss follows (its "no object" index and down-weighting)."""
        num_classes = positive_int("num_classes", num_classes, "the number of classes, background included")
        old = self.class_predictor
        predictor = nn.Linear(old.in_features, num_classes + 1, device=old.weight.device, dtype=old.weight.dtype)
        self._init_weights(predictor)
        self.class_predictor = predictor
        self.num_classes = num_classes
        self.config.num_labels = num_classes
        # the loss fills unmatched queries with class num_labels ("no object") and weighs that
        # class by eos_coef: both must move with the count
        criterion = self.criterion
        empty_weight = criterion.empty_weight.new_ones(num_classes + 1)
        empty_weight[-1] = criterion.eos_coef
        criterion.num_labels = num_classes
        criterion.empty_weight = empty_weight  # stays a registered buffer

    def loss_components(
        self,
        outputs: MaskOutputs,
        mask_labels: list[torch.Tensor],
        class_labels: list[torch.Tensor],
        valid: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Weighted Hungarian-matched losses (class cross-entropy, mask BCE, mask dice) of the
        final prediction and, with ``auxiliary_loss``, of every earlier one (in float32), named
        as transformers' loss names them.

        ``valid`` (``(B, H, W)`` at the targets' size, 0 at ignored pixels) leaves those pixels
        out of the matching costs, the point sampling and the mask losses; without it the losses
        are transformers' (the same random points too).
        """
        predictions = [outputs]
        if self.auxiliary_loss:
            predictions += list(outputs.get("auxiliary_outputs") or [])
        criterion = self.criterion
        num_masks = criterion.get_num_masks(class_labels, device=class_labels[0].device)
        losses: dict[str, torch.Tensor] = {}
        for index, prediction in enumerate(predictions):
            masks = prediction["masks_queries_logits"].float()
            classes = prediction["class_queries_logits"].float()
            indices = criterion.matcher(masks, classes, mask_labels, class_labels, valid)
            step = {**point_mask_losses(criterion, masks, mask_labels, indices, num_masks, valid),
                    **criterion.loss_labels(classes, class_labels, indices)}
            suffix = "" if index == 0 else f"_{index - 1}"  # transformers' names: loss_mask, loss_mask_0, ...
            losses.update({f"{name}{suffix}": value for name, value in step.items()})
        for name in losses:
            weight = next(w for key, w in self.loss_weights.items() if name.startswith(key))
            losses[name] = losses[name] * weight
        return losses

    def semantic_probabilities(self, outputs: MaskOutputs) -> torch.Tensor:
        """``(B, num_classes, h, w)``: sum over queries of P(class) x P(pixel in mask).

        The "no object" class is dropped, so the values are scores in ``[0, Q]`` that need
        not sum to 1 over classes.
        """
        class_probs = outputs["class_queries_logits"].float().softmax(-1)[..., :-1]
        mask_probs = outputs["masks_queries_logits"].float().sigmoid()
        return torch.einsum("bqc,bqhw->bchw", class_probs, mask_probs)
