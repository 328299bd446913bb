"""Segmenter: backbone -> neck -> head -> logits at the input size."""

from __future__ import annotations

from itertools import chain
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..description import ModelDescription
from .._validation import positive_int
from .. import compat
from ..losses import dice_ce_loss
from ..optim import prefix_group_matcher

__all__ = ["Segmenter"]

# side of the neck's probe maps when measuring feature_info: even at every pyramid level
_NECK_PROBE_SIZE = 64


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
        self.backbone_frozen = False  # see freeze_backbone
        # set by segzoo.create_model: what rebuilds the model (config.json, adapter_config.json)
        self.description: ModelDescription | None = None
        self._feature_info: list[dict[str, Any]] | None = None  # measured on first use

    @property
    def model_name(self) -> str | None:
        """The registered architecture (``None`` for a model not built by ``create_model``)."""
        return self.description.architecture if self.description is not None else None

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """The ``create_model`` keywords that rebuild the model (the description's, kept current)."""
        return self.description.kwargs if self.description is not None else {}

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

    def compute_loss(
        self,
        outputs: torch.Tensor,
        target: torch.Tensor,
        ignore_index: int | None = 255,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        weight_ce: float = 1.0,
        weight_dice: float = 1.0,
        batch_dice: bool = True,
    ) -> torch.Tensor:
        """The training loss of ``forward``'s logits: nnU-Net's cross-entropy + soft Dice
        (:func:`segzoo.losses.dice_ce_loss`: Dice over the batch and the foreground classes).

        Args:
            outputs: the ``(B, num_classes, H, W)`` logits ``forward`` returned.
            target: integer class ids ``(B, H, W)`` or ``(B, 1, H, W)`` at the input size, each in
                ``[0, num_classes)`` or ``ignore_index``.
            ignore_index: label of the pixels left out of both terms (``None``: none is).
            class_weights: ``num_classes`` weights of the cross-entropy term.
            weight_ce, weight_dice, batch_dice: the terms' weights and the Dice's batch sum.
        """
        if isinstance(outputs, dict):
            raise TypeError(
                f"{type(self).__name__} predicts per-pixel logits, but compute_loss got a dict of set predictions "
                "(a Mask2Former or EoMT model's train() outputs); pass this model's own forward output"
            )
        if isinstance(outputs, torch.Tensor) and outputs.ndim == 4 and outputs.shape[1] != self.num_classes:
            raise ValueError(
                f"outputs have {outputs.shape[1]} channels, the model predicts num_classes={self.num_classes}; "
                "pass the logits of this model's forward pass"
            )
        return dice_ce_loss(outputs, target, ignore_index=ignore_index, class_weights=class_weights,
                            weight_ce=weight_ce, weight_dice=weight_dice, batch_dice=batch_dice)

    # -- timm's model interface ----------------------------------------------------------

    @property
    def num_features(self) -> int:
        """Channels of the features the classifier reads (timm's name), ``get_classifier()``'s
        input width: the per-pixel features ``forward_head(..., pre_logits=True)`` returns
        (``decoder_hidden_size`` for SegFormer, UperNet and DPT), or the per-query embeddings of
        Mask2Former. The several maps ``forward_features`` returns have their channels in
        :attr:`feature_info`."""
        classifier = self.get_classifier()
        return int(classifier.in_channels if isinstance(classifier, nn.Conv2d) else classifier.in_features)

    def forward_head(self, features: Sequence[torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        """The decode head on ``forward_features``' maps (timm's split of ``forward``).

        Returns the head's logits at its own resolution (the finest map's for SegFormer and
        UperNet, 4x it for DPT), before ``forward`` resamples them to the padded input and crops;
        with ``pre_logits=True``, the ``(B, num_features, h, w)`` features the classifier reads.
        """
        if not pre_logits:
            return self.decode_head(features)
        captured: list[torch.Tensor] = []
        # the classifier's input, whatever the head computes around it (DPT upsamples after it)
        hook = self.get_classifier().register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            self.decode_head(features)
        finally:
            hook.remove()
        return captured[-1]


    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The neck's output maps, finest first: what the decode head consumes.

        The input is checked and padded as in :meth:`forward`, so the maps belong to the
        padded image; :attr:`feature_info` gives their channels and strides.
        """
        self._check_input(x)
        return self.neck(self.backbone(self._pad_to_patch_multiple(x)))

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """One dict per map of :meth:`forward_features`, timm's convention: ``num_chs``,
        ``reduction`` (stride relative to the input: 4/8/16/32 for a patch-16 ViT with the
        pyramid neck or for MiT, 3.5/7/14/28 for patch 14; an ``int`` when whole) and
        ``module`` (the module whose output list holds the map)."""
        if self._feature_info is None:
            self._feature_info = self._measure_feature_info()
        return [dict(info) for info in self._feature_info]

    def get_classifier(self) -> nn.Module:
        """The head's final per-class layer: the 1x1 ``classifier`` convolution of the
        SegFormer, UperNet and DPT heads, Mask2Former's class-prediction linear layer (its
        ``num_classes + 1`` outputs end with "no object")."""
        head = self.decode_head
        if hasattr(head, "get_classifier"):
            return head.get_classifier()
        classifier = getattr(head, "classifier", None)
        if not isinstance(classifier, nn.Module):
            raise TypeError(
                f"{type(head).__name__} has no `classifier` layer and no get_classifier(): name the head's final "
                "per-class layer `classifier` (or give the head get_classifier / reset_classifier methods)"
            )
        return classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head's per-class layer by a freshly initialised one for ``num_classes``
        (background included); every other weight stays. ``num_classes`` and what
        :func:`segzoo.save_pretrained` writes follow, so a saved model reloads with the new count.
        """
        num_classes = positive_int("num_classes", num_classes, "the number of classes, background included")
        head = self.decode_head
        if hasattr(head, "reset_classifier"):
            head.reset_classifier(num_classes)
        else:
            head.classifier = _fresh_classifier(self.get_classifier(), num_classes)
            config = getattr(head, "config", None)
            if hasattr(config, "num_labels"):  # transformers' heads: keep their config describing them
                config.num_labels = num_classes
        self.num_classes = num_classes
        # the kwarg that rebuilds the model: config.json's num_classes comes from it
        self.model_kwargs["num_classes"] = num_classes

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer groups, on full parameter names (for ``timm.optim.create_optimizer_v2(model,
        layer_decay=...)``): the backbone's own ``group_matcher`` under ``backbone.``, i.e.
        ``stem`` (patch embedding, tokens, position embeddings) first, then one group per ViT
        block or MiT stage; the neck and head, unmatched, form the last group. ``coarse``
        changes nothing: a block (a stage for MiT) already is the coarse unit, as for timm's
        ViTs. The same layers as :func:`segzoo.optim.param_groups`."""
        return prefix_group_matcher(self.backbone.group_matcher(coarse=coarse), "backbone.")

    def no_weight_decay(self) -> set[str]:
        """Full names of the position embeddings and tokens (timm's name); timm's
        optimizer factory also exempts every 1-D tensor (norms, biases)."""
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    # -- fine-tuning switches ------------------------------------------------------------

    def freeze_backbone(self, freeze: bool = True) -> None:
        """Stop (or restart) gradient updates of every backbone parameter.

        A frozen backbone also stays in eval mode when the model trains: stochastic depth
        and dropout would only add noise to features it can no longer adapt to.
        """
        for param in self.backbone.parameters():
            param.requires_grad = not freeze
        self.backbone_frozen = bool(freeze)
        self.backbone.train(self.training and not freeze)

    def train(self, mode: bool = True) -> "Segmenter":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.train(False)
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute backbone activations in the backward pass (timm's switch): less memory, more time."""
        self.backbone.set_grad_checkpointing(enable)

    def enable_lora(self, rank: int = 8, lora_alpha: float = 16.0, lora_dropout: float = 0.05,
                    target_modules: Sequence[str] | None = None, verbose: bool = True) -> None:
        """Compatibility name: :func:`segzoo.compat.enable_lora` (``segzoo.lora.apply_lora``)."""
        compat.enable_lora(self, rank, lora_alpha, lora_dropout, target_modules, verbose)

    def disable_lora(self) -> None:
        """Compatibility name: :func:`segzoo.compat.disable_lora` (``segzoo.lora.merge_lora``)."""
        compat.disable_lora(self)

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
        if x.shape[1] != self.in_chans and x.shape[-1] == self.in_chans:
            raise ValueError(
                f"input of shape {tuple(x.shape)} looks channels-last (B, H, W, C); the model takes (B, C, H, W) "
                f"with C = {self.in_chans}: use x.permute(0, 3, 1, 2)"
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

    def _measure_feature_info(self) -> list[dict[str, Any]]:
        """Strides measured from shapes, on the meta device (no memory, no compute): the
        backbone at a size it takes exactly, the neck on even maps (its own factors)."""
        size = self.fixed_input_size or (self._probe_side(),) * 2
        weights = next(chain(self.parameters(), self.buffers()), None)
        dtype = weights.dtype if weights is not None and weights.is_floating_point() else torch.float32
        with torch.no_grad():
            image = torch.empty(1, self.in_chans, *size, device="meta", dtype=dtype)
            backbone_maps = _meta_call(self.backbone, image)
            side = _NECK_PROBE_SIZE
            neck_in = [torch.empty(1, m.shape[1], side, side, device="meta", dtype=dtype) for m in backbone_maps]
            neck_maps = _meta_call(self.neck, neck_in)
        infos = []
        for backbone_map, neck_map in zip(backbone_maps, neck_maps):
            reduction = size[0] / backbone_map.shape[-2] * side / neck_map.shape[-2]
            reduction = int(reduction) if reduction.is_integer() else reduction
            infos.append(dict(num_chs=int(neck_map.shape[1]), reduction=reduction, module="neck"))
        return infos

    def _probe_side(self) -> int:
        """A side every stride divides: 64 padding units (the pyramid halves them exactly), a
        multiple of 32 (MiT's coarsest stride) and at least the minimum input."""
        side = 64 * self.pad_multiple
        while side < self.min_input_size or side % 32:
            side *= 2
        return side

    def _pad_to_patch_multiple(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = -x.shape[-2] % self.pad_multiple
        pad_w = -x.shape[-1] % self.pad_multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return x


def _fresh_classifier(old: nn.Module, num_classes: int) -> nn.Module:
    """A layer like ``old`` with ``num_classes`` outputs and PyTorch's default initialisation
    (the zoo's SegFormer and UperNet heads are built standalone, so that is their init)."""
    factory = dict(device=old.weight.device, dtype=old.weight.dtype)
    if isinstance(old, nn.Conv2d):
        return nn.Conv2d(old.in_channels, num_classes, old.kernel_size, stride=old.stride, padding=old.padding,
                         dilation=old.dilation, bias=old.bias is not None, padding_mode=old.padding_mode, **factory)
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, num_classes, bias=old.bias is not None, **factory)
    raise TypeError(
        f"reset_classifier replaces an nn.Conv2d or nn.Linear classifier, got {type(old).__name__}; "
        "give the head a reset_classifier(num_classes) method"
    )


def _meta_call(module: nn.Module, *args: Any) -> Any:
    """``module(*args)`` with every parameter and buffer on the meta device: shapes only."""
    tensors = {name: t.to("meta") for name, t in chain(module.named_parameters(), module.named_buffers())}
    return torch.func.functional_call(module, tensors, args, strict=False)


def _count(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0
