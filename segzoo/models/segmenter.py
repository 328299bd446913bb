"""Segmenter: backbone -> neck -> head -> logits at the input size."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Segmenter"]


class Segmenter(nn.Module):
    """A semantic-segmentation model: ``(B, in_chans, H, W)`` float -> ``(B, num_classes, H, W)`` logits.

    Works for any ``H, W >= patch_size``: the input is zero-padded on the bottom/right
    to a multiple of the patch size, the ViT interpolates its position embeddings
    (or uses RoPE), and the logits are upsampled and cropped back to ``H x W``.
    A backbone that takes any size (MiT) sets ``pad_multiple = 1`` and its own
    ``min_input_size`` instead.

    Args:
        backbone: a :class:`~segzoo.backbones.ViTBackbone` (anything with ``patch_size``,
            ``in_chans``, ``out_channels`` and ``forward(x) -> list of maps``).
        neck: maps the backbone's list of maps to the head's list of maps.
        decode_head: list of maps -> logits at the first map's resolution.
        num_classes: number of output channels (classes, background included).
        pretrained_cfg: mean/std/patch size/licence/source of the backbone weights.
        fixed_input_size: set when the backbone was built for one input size
            (``create_model(..., img_size=512)``, for ``torch.compile``); other sizes
            are then rejected instead of silently resampled.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        decode_head: nn.Module,
        num_classes: int,
        pretrained_cfg: dict[str, Any] | None = None,
        fixed_input_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.decode_head = decode_head
        self.num_classes = int(num_classes)
        self.in_chans = int(backbone.in_chans)
        self.patch_size = int(backbone.patch_size)
        # plain ViTs pad to whole patches; a backbone that takes any size (MiT) says so itself
        self.pad_multiple = int(getattr(backbone, "pad_multiple", self.patch_size))
        self.min_input_size = int(getattr(backbone, "min_input_size", self.patch_size))
        self.pretrained_cfg: dict[str, Any] = dict(pretrained_cfg or {})
        self.fixed_input_size = tuple(fixed_input_size) if fixed_input_size else None
        # set by segzoo.create_model: what save_pretrained writes to config.json to rebuild
        self.model_name: str | None = None
        self.model_kwargs: dict[str, Any] = {}

    @property
    def default_cfg(self) -> dict[str, Any]:  # timm's older name
        return self.pretrained_cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        height, width = x.shape[-2:]
        x = self._pad_to_patch_multiple(x)
        features = self.backbone(x)
        features = self.neck(features)
        logits = self.decode_head(features)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :height, :width]

    # -- fine-tuning switches ------------------------------------------------------------

    def freeze_backbone(self, freeze: bool = True) -> None:
        """Stop (or restart) gradient updates of every backbone parameter."""
        for param in self.backbone.parameters():
            param.requires_grad = not freeze

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute backbone activations in the backward pass (timm's switch): less memory, more time."""
        self.backbone.set_grad_checkpointing(enable)

    def enable_lora(
        self,
        rank: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.05,
        target_modules: Sequence[str] | None = None,
        verbose: bool = True,
    ) -> None:
        """Compatibility name of :func:`segzoo.lora.apply_lora` (peft LoRA on the backbone,
        default target ``qkv``); prints the trainable-parameter table unless ``verbose=False``."""
        from ..lora import apply_lora  # peft is imported only when LoRA is used

        apply_lora(self, r=rank, alpha=lora_alpha, dropout=lora_dropout, target_modules=target_modules)
        if verbose:
            print(f"LoRA enabled with rank={rank}, alpha={lora_alpha}")
            self.print_trainable_parameters(detailed=True)

    def disable_lora(self) -> None:
        """Compatibility name of :func:`segzoo.lora.merge_lora`: fold the adapters into the backbone.

        On a model without LoRA it warns (the original printed a notice) instead of raising,
        so scripts that call it unconditionally keep working; ``merge_lora`` raises.
        """
        from ..lora import has_lora, merge_lora

        if not has_lora(self):
            warnings.warn("disable_lora(): LoRA is not enabled on this model, nothing to merge", stacklevel=2)
            return
        merge_lora(self)

    # -- reporting -----------------------------------------------------------------------

    def count_parameters(self) -> dict[str, tuple[int, int]]:
        """``{"backbone" | "neck" | "decode_head" | "total": (trainable, total)}``."""
        parts = {"backbone": self.backbone, "neck": self.neck, "decode_head": self.decode_head}
        counts = {name: _count(module) for name, module in parts.items()}
        counts["total"] = _count(self)
        return counts

    def print_trainable_parameters(self, detailed: bool = False) -> None:
        """One line of totals (as peft prints it); ``detailed`` adds backbone / neck / decode_head."""
        counts = self.count_parameters()
        trainable, total = counts["total"]
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {_percent(trainable, total):.2f}%")
        if detailed:
            print("-" * 64)
            for name in ("backbone", "neck", "decode_head"):
                part_trainable, part_total = counts[name]
                print(
                    f"  {name + ':':<13}{part_trainable:>14,} / {part_total:>14,} "
                    f"({_percent(part_trainable, part_total):.2f}%)"
                )

    # -- helpers -------------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor of shape (B, {self.in_chans}, H, W), got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(
                f"expected a 4-D input (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}; "
                "add the batch dimension with x.unsqueeze(0) for a single image"
            )
        if x.shape[0] == 0:
            raise ValueError(f"the input batch is empty (shape {tuple(x.shape)}); pass at least one image")
        if not x.is_floating_point():
            raise TypeError(
                f"expected a floating-point input, got {x.dtype}; convert with x.float() and normalise with "
                f"mean={self.pretrained_cfg.get('mean')}, std={self.pretrained_cfg.get('std')}"
            )
        weights = next(self.backbone.parameters(), None)
        if weights is not None and x.dtype != weights.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"input dtype {x.dtype} differs from the model's weights ({weights.dtype}); convert with "
                f"x.to({weights.dtype}) or run the model under torch.autocast"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"model expects {self.in_chans} input channel(s), got {x.shape[1]} (shape {tuple(x.shape)}); "
                f"create the model with in_chans={x.shape[1]} to adapt the patch embedding"
            )
        if x.shape[-2] < self.min_input_size or x.shape[-1] < self.min_input_size:
            size = self.min_input_size
            minimum = f"the {size}x{size} minimum of the backbone"
            what = f"one {size}x{size} patch" if size == self.patch_size else minimum
            raise ValueError(
                f"input {x.shape[-2]}x{x.shape[-1]} is smaller than {what}; "
                f"resize or pad it to at least {size} pixels per side"
            )
        if self.fixed_input_size is not None and tuple(x.shape[-2:]) != self.fixed_input_size:
            raise ValueError(
                f"model was built for {self.fixed_input_size[0]}x{self.fixed_input_size[1]} inputs (img_size=...), "
                f"got {x.shape[-2]}x{x.shape[-1]}; create it without img_size to accept any size"
            )

    def _pad_to_patch_multiple(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = -x.shape[-2] % self.pad_multiple
        pad_w = -x.shape[-1] % self.pad_multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return x


def _count(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0
