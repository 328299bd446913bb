"""EomtSegmenter: EoMT's encoder-only forward over timm's own ViT blocks.

EoMT does not fit backbone -> neck -> head: the head's queries run *inside* the ViT. The
backbone (a :class:`~segzoo.backbones.ViTBackbone` that keeps every block and the final
norm) embeds the image and runs its first ``depth - num_blocks`` blocks; the queries are
then appended to the tokens and the last ``num_blocks`` blocks (still the backbone's, so
``freeze_backbone``, LoRA, gradient checkpointing and regional compilation treat them as
every other block) run on both, each with a masked-attention mask from the prediction of
the tokens before it while the annealing keeps it. After the final norm the head predicts
classes and masks (:class:`~segzoo.heads.EomtHead`).

Token order in the query phase is ``[prefix, patches, queries]``: timm's RoPE attention
rotates every token after the prefix, so the queries come last with an identity rotation
appended to the RoPE table; position embeddings were added before, to the patches only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..heads.eomt import query_attention_mask
from .mask_classification import MaskClassificationSegmenter

__all__ = ["EomtSegmenter"]


class EomtSegmenter(MaskClassificationSegmenter):
    """Encoder-only mask transformer: train mode returns set outputs (``compute_loss`` trains
    them), eval mode per-pixel log-probabilities, as :class:`MaskClassificationSegmenter`.

    ``set_mask_annealing(progress)`` moves the masked attention from on (``0``, a new model)
    to off (``1``, end of training) with the paper's schedule; the state is saved with the
    model. In eval a block that still masks masks every query (no random choice), so
    predictions are deterministic; a fully annealed model runs the plain ViT blocks.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, decode_head: nn.Module, num_classes: int,
                 **kwargs: Any):
        super().__init__(backbone, neck, decode_head, num_classes, **kwargs)
        if decode_head.num_blocks > backbone.depth:
            raise ValueError(
                f"num_blocks={decode_head.num_blocks} query blocks need a ViT of at least that depth, this one has "
                f"{backbone.depth} blocks; pass num_blocks <= {backbone.depth}"
            )
        if not hasattr(backbone.model, "norm") or isinstance(backbone.model.norm, nn.Identity):
            raise ValueError("EoMT reads the last block through the ViT's final norm: build the backbone with "
                             "keep_norm=True")

    def set_mask_annealing(self, progress: float) -> None:
        """Masked-attention annealing at training ``progress`` in ``[0, 1]`` (e.g. epoch / num_epochs)."""
        self.decode_head.set_mask_annealing(progress)

    @property
    def mask_probabilities(self) -> list[float]:
        """Per query block, the probability that training masks a query's attention."""
        return self.decode_head.mask_probabilities

    def forward_set_predictions(self, padded: torch.Tensor) -> dict[str, Any]:
        grid = (padded.shape[-2] // self.patch_size, padded.shape[-1] // self.patch_size)
        tokens, auxiliary = self._encode(padded, grid)
        mask_logits, class_logits = self._predict(tokens, grid)
        return {"class_queries_logits": class_logits, "masks_queries_logits": mask_logits,
                "auxiliary_outputs": auxiliary}

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The last block's patch tokens after the final norm, ``(B, embed_dim, H/p, W/p)``:
        what the mask module upscales (the input checked and padded as in :meth:`forward`)."""
        self._check_input(x)
        padded = self._pad_to_patch_multiple(x)
        grid = (padded.shape[-2] // self.patch_size, padded.shape[-1] // self.patch_size)
        tokens, _ = self._encode(padded, grid)
        return [self._patch_map(self.backbone.model.norm(tokens), grid)]

    def forward_head(self, features: Any, pre_logits: bool = False) -> Any:
        """Not defined for EoMT: its queries run inside the ViT's last blocks, so no head maps
        ``forward_features``' output to predictions. ``forward`` gives the set predictions (train)
        or log-probabilities (eval)."""
        raise NotImplementedError(
            "EoMT has no head to run on forward_features' output: its queries join the ViT's last "
            f"{self.decode_head.num_blocks} blocks. Call the model itself (model(x)) for the set predictions in "
            "train() or the per-pixel log-probabilities in eval()"
        )

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """One map: the normed patch tokens at the patch stride (see :meth:`forward_features`)."""
        return [dict(num_chs=int(self.backbone.embed_dim), reduction=self.patch_size, module="backbone")]

    # -- helpers -------------------------------------------------------------------------

    def _encode(self, padded: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Every ViT block, the queries joined for the last ``num_blocks``: the final tokens
        (``[prefix, patches, queries]``) and, in training with deep supervision, the prediction
        before each query block (computed otherwise only for a block that still masks)."""
        backbone, head = self.backbone, self.decode_head
        tokens, rope = backbone.embed_tokens(padded)
        first_query_block = backbone.depth - head.num_blocks
        for index in range(first_query_block):
            tokens = backbone.run_block(index, tokens, rope)
        queries = head.query.weight.to(tokens.dtype)[None].expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([tokens, queries], dim=1)
        rope = _with_identity_rotation(rope, head.num_queries)
        auxiliary = []
        for offset, probability in enumerate(head.mask_probabilities):
            index = first_query_block + offset
            attn_mask = None
            supervised = self.training and head.deep_supervision
            if supervised or probability > 0:
                mask_logits, class_logits = self._predict(tokens, grid)
                if supervised:
                    auxiliary.append({"class_queries_logits": class_logits, "masks_queries_logits": mask_logits})
                if probability > 0:  # an annealed block runs without a mask: SDPA keeps its fastest kernels
                    fused = getattr(backbone.model.blocks[index].attn, "fused_attn", True)
                    attn_mask = query_attention_mask(
                        mask_logits, grid, backbone.num_prefix_tokens, probability if self.training else 1.0,
                        additive_dtype=None if fused else tokens.dtype,
                    )
            tokens = backbone.run_block(index, tokens, rope, attn_mask=attn_mask)
        return tokens, auxiliary

    def _predict(self, tokens: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks and classes from the tokens of the query phase, through the ViT's final norm."""
        normed = self.backbone.model.norm(tokens)
        queries = normed[:, -self.decode_head.num_queries:]
        return self.decode_head(queries, self._patch_map(normed, grid))

    def _patch_map(self, normed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        start = self.backbone.num_prefix_tokens
        patches = normed[:, start:start + grid[0] * grid[1]]
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *grid)


def _with_identity_rotation(rope: torch.Tensor | None, num_queries: int) -> torch.Tensor | None:
    """timm's RoPE table (``[sin | cos]`` per token after the prefix) with ``num_queries`` rows
    of the identity rotation (sin 0, cos 1) appended: the queries carry no position."""
    if rope is None:
        return None
    half = rope.shape[-1] // 2
    shape = (*rope.shape[:-2], num_queries)
    identity = torch.cat([rope.new_zeros(*shape, half), rope.new_ones(*shape, rope.shape[-1] - half)], dim=-1)
    return torch.cat([rope, identity], dim=-2)
