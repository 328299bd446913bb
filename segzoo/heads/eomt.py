"""EoMT's mask module and set loss (Kerssies et al., "Your ViT is Secretly an Image
Segmentation Model", CVPR 2025), from transformers' EoMT modules.

EoMT has no decoder: learnable queries join the ViT's tokens for its last ``num_blocks``
blocks (:class:`~segzoo.models.EomtSegmenter` runs timm's blocks). This head holds what
EoMT adds to the ViT: the queries, the mask module (transformers' ``EomtScaleBlock``
upscaling the patch tokens 4x, ``EomtMaskHead`` on the queries), the class predictor,
the loss (transformers' ``EomtLoss`` with the batched matcher) and the masked-attention
annealing state.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import EomtConfig
from transformers.models.eomt.modeling_eomt import EomtLoss, EomtMaskHead, EomtPreTrainedModel, EomtScaleBlock

from .._validation import positive_int
from .mask_classifier import MaskClassifierMixin
from .mask_matching import BatchedHungarianMatcher

__all__ = ["EomtHead", "create_eomt_head", "mask_annealing_probability", "query_attention_mask"]


# the paper's schedule: (1 - t) ** 0.9 inside each block's window
_ANNEALING_POWER = 0.9


class EomtHead(MaskClassifierMixin, EomtPreTrainedModel):
    """Query tokens and patch tokens (after the ViT's final norm) -> class and mask logits.

    A transformers ``PreTrainedModel`` only so that transformers' own EoMT initialisation
    applies (unit-normal queries, the loss's "no object" weight); it holds no ViT.

    ``forward(queries, patches)`` takes ``(B, Q, C)`` query tokens and the ``(B, C, h, w)``
    patch-token map and returns ``(mask_logits, class_logits)``: ``(B, Q, 4h, 4w)`` and
    ``(B, Q, num_classes + 1)``, the last class "no object" (transformers' ``predict``).
    """

    def __init__(self, config: EomtConfig, deep_supervision: bool = True):
        super().__init__(config)
        self.num_classes = int(config.num_labels)
        self.num_queries = int(config.num_queries)
        self.num_blocks = int(config.num_blocks)
        self.deep_supervision = bool(deep_supervision)
        self.query = nn.Embedding(config.num_queries, config.hidden_size)
        self.upscale_block = EomtScaleBlock(config)
        self.mask_head = EomtMaskHead(config)
        self.class_predictor = nn.Linear(config.hidden_size, config.num_labels + 1)
        self.loss_weights = {
            "loss_cross_entropy": float(config.class_weight),
            "loss_mask": float(config.mask_weight),
            "loss_dice": float(config.dice_weight),
        }
        self.criterion = EomtLoss(config=config, weight_dict=self.loss_weights)
        # same costs and points as transformers' matcher, one batched cost matrix and host copy per call
        self.criterion.matcher = BatchedHungarianMatcher(
            cost_class=config.class_weight, cost_mask=config.mask_weight, cost_dice=config.dice_weight,
            num_points=config.train_num_points,
        )
        # probability that block i of the query phase masks a query's attention (1 -> 0 over training).
        # The buffer is saved with the model (a trained model predicts without masks); the list is what
        # forward reads, so no host copy per call and compiled graphs guard on plain floats.
        self.register_buffer("attn_mask_probs", torch.ones(self.num_blocks))
        self._mask_probs = [1.0] * self.num_blocks
        self.register_load_state_dict_post_hook(_read_mask_probs)
        self.post_init()

    def forward(self, queries: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        class_logits = self.class_predictor(queries)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_head(queries), self.upscale_block(patches))
        return mask_logits, class_logits

    # -- masked-attention annealing ------------------------------------------------------

    @property
    def mask_probabilities(self) -> list[float]:
        """Per query block, the probability that a query's attention is masked in training."""
        return list(self._mask_probs)

    def set_mask_annealing(self, progress: float) -> None:
        """Set the masking probabilities for training ``progress`` in ``[0, 1]`` (see
        :func:`mask_annealing_probability`)."""
        if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be a number in [0, 1] (epoch / num_epochs), got {progress!r}")
        probs = [mask_annealing_probability(float(progress), i, self.num_blocks) for i in range(self.num_blocks)]
        self._mask_probs = probs
        if self.attn_mask_probs.device.type != "meta":
            with torch.no_grad():
                self.attn_mask_probs.copy_(torch.tensor(probs, dtype=self.attn_mask_probs.dtype))

    # -- the zoo's mask-classification interface -----------------------------------------

    @property
    def auxiliary_loss(self) -> bool:
        """Whether the earlier predictions are supervised too (deep supervision)."""
        return self.deep_supervision


def _read_mask_probs(module: EomtHead, incompatible_keys: Any) -> None:
    """After ``load_state_dict``: the loaded probabilities are the ones forward uses."""
    if module.attn_mask_probs.device.type != "meta":
        module._mask_probs = [float(p) for p in module.attn_mask_probs.tolist()]


def mask_annealing_probability(progress: float, block: int, num_blocks: int) -> float:
    """Probability that query block ``block`` (0 = first) masks attention at training ``progress``.

    The paper's staggered schedule: training is cut into ``num_blocks + 2`` equal parts; block
    ``i`` keeps its mask during the first ``i + 1`` parts, anneals it polynomially (power 0.9)
    during part ``i + 2`` and trains without it afterwards, so every mask is gone for the
    last part (its 12-epoch COCO runs: windows of 2 epochs starting at epoch 2).
    """
    window = 1.0 / (num_blocks + 2)
    t = min(max((progress - (block + 1) * window) / window, 0.0), 1.0)
    return (1.0 - t) ** _ANNEALING_POWER


def query_attention_mask(
    mask_logits: torch.Tensor,
    grid: tuple[int, int],
    num_prefix_tokens: int,
    mask_probability: float,
    additive_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The attention mask of a query block, for tokens ordered ``[prefix, patches, queries]``.

    Each query attends only to the patches its predicted mask covers (logits > 0 at the
    token grid); prefix tokens, queries and every patch row attend freely. In training a
    query keeps its mask with ``mask_probability`` (the annealing), else attends to all.
    Returns ``(B, 1, N, N)``: boolean (True = attend) for fused attention, or additive
    (0 / -inf) in ``additive_dtype`` for timm's non-fused path, which adds the mask to the scores.
    """
    batch, num_queries = mask_logits.shape[:2]
    num_patches = grid[0] * grid[1]
    device = mask_logits.device
    covered = F.interpolate(mask_logits, size=grid, mode="bilinear", align_corners=False).flatten(2) > 0
    if mask_probability < 1.0:
        covered = covered | (torch.rand(batch, num_queries, 1, device=device) > mask_probability)
    total = num_prefix_tokens + num_patches + num_queries
    query_rows = torch.cat([
        torch.ones(batch, num_queries, num_prefix_tokens, dtype=torch.bool, device=device),
        covered,
        torch.ones(batch, num_queries, num_queries, dtype=torch.bool, device=device),
    ], dim=2)
    token_rows = torch.ones(batch, num_prefix_tokens + num_patches, total, dtype=torch.bool, device=device)
    allowed = torch.cat([token_rows, query_rows], dim=1)[:, None]
    if additive_dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=additive_dtype, device=device).masked_fill(~allowed, float("-inf"))


def create_eomt_head(
    in_channels: list[int],
    num_classes: int,
    num_queries: int = 100,
    num_blocks: int = 4,
    num_upscale_blocks: int = 2,
    deep_supervision: bool = True,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    no_object_weight: float = 0.1,
    train_num_points: int = 12544,
) -> EomtHead:
    """EoMT head on a ViT of width ``in_channels[-1]``.

    ``num_blocks``: the ViT's last blocks that see the queries (4 in the paper).
    ``num_upscale_blocks``: 2x transposed-convolution steps of the patch tokens (2: masks at
    a quarter of the patch size). ``deep_supervision``: also train the mask predicted before
    each query block. The loss weights and point count are the paper's.
    """
    num_queries = positive_int("num_queries", num_queries)
    num_blocks = positive_int("num_blocks", num_blocks, "the ViT's last blocks that see the queries (4 in the paper)")
    num_upscale_blocks = positive_int("num_upscale_blocks", num_upscale_blocks)
    config = EomtConfig(
        hidden_size=int(in_channels[-1]),
        num_labels=num_classes,
        num_queries=num_queries,
        num_blocks=num_blocks,
        num_upscale_blocks=num_upscale_blocks,
        class_weight=class_weight,
        mask_weight=mask_weight,
        dice_weight=dice_weight,
        no_object_weight=no_object_weight,
        train_num_points=train_num_points,
    )
    return EomtHead(config, deep_supervision=deep_supervision)
