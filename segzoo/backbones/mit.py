"""Mix Transformer (MiT-b0 ... b5), SegFormer's own hierarchical encoder, from transformers.

Unlike the plain ViTs, MiT already gives strides 4/8/16/32 and works on any image size
(overlapping strided-conv patch embeddings, no position embeddings), so it needs no
neck and no padding: the zoo's ``segformer_mit_*`` models feed transformers'
``SegformerModel`` the image as it is and match transformers' logits exactly.
"""

from __future__ import annotations


import os
from typing import Any, Sequence

import torch
from torch import nn
from transformers import SegformerConfig, SegformerModel

from .._validation import did_you_mean, positive_int
from .._weights import LoadReport
from .mit_weights import load_segformer_checkpoint
from .specs import BackboneSpec

__all__ = ["BACKBONE_CLASS", "MiTBackbone", "NO_LORA_ON_MIT", "create_backbone", "mit_encoder_config"]

# stage 1 has a sequence-reduction conv of kernel 8 on the stride-4 map: below 29 px it has nothing to convolve
MIT_MIN_INPUT_SIZE = 32
NO_LORA_ON_MIT = (
    "LoRA in segzoo adapts the ViT families' blocks (DINOv3, DINOv2, RETFound, VisionFM); segformer_mit_* models "
    "fine-tune fully, or with freeze_backbone=True to train only the head"
)


def mit_encoder_config(
    spec: BackboneSpec,
    in_chans: int = 3,
    drop_path_rate: float = 0.1,
    backbone_kwargs: dict[str, Any] | None = None,
) -> SegformerConfig:
    """transformers' ``SegformerConfig`` of the MiT encoder of ``spec``.

    ``backbone_kwargs`` override any ``SegformerConfig`` encoder field (e.g. tiny test
    sizes: ``hidden_sizes=[16, 32, 32, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1]``).
    """
    _check_encoder_fields(backbone_kwargs or {})
    fields: dict[str, Any] = {**spec.build_kwargs, **(backbone_kwargs or {})}
    return SegformerConfig(num_channels=positive_int("in_chans", in_chans), drop_path_rate=drop_path_rate, **fields)


class MiTBackbone(nn.Module):
    """transformers' ``SegformerModel`` as a feature extractor: four NCHW maps at strides 4/8/16/32.

    ``patch_size`` is the stride of the first (overlapping) patch embedding, for
    reporting; ``pad_multiple = 1`` tells the Segmenter not to pad (MiT takes any
    size, and padding would change its outputs), ``min_input_size`` is the smallest
    side the encoder accepts.
    """

    kind = "mit"
    pad_multiple = 1
    min_input_size = MIT_MIN_INPUT_SIZE
    supports_lora = False  # transformers' layers, not timm's blocks: fine-tuned fully
    lora_refusal = NO_LORA_ON_MIT
    dynamic_export = True  # no position embeddings: one ONNX file takes any size
    default_neck = "none"  # already a pyramid at strides 4-32
    neck_choices: tuple[str, ...] | None = ("none",)

    def __init__(self, model: SegformerModel):
        super().__init__()
        self.model = model
        config = model.config
        self.patch_size = int(config.strides[0])
        self.in_chans = int(config.num_channels)
        self.out_channels = list(config.hidden_sizes)
        _install_output_hooks(model)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x, output_hidden_states=True).hidden_states)

    def build_facts(self) -> dict[str, Any]:
        """What this build settled, recorded in ``model.pretrained_cfg``."""
        return dict(timm_arch=None, patch_size=self.patch_size, in_chans=self.in_chans, pad_multiple=self.pad_multiple,
                    min_input_size=self.min_input_size)

    def load_checkpoint(self, model: nn.Module, checkpoint: str | os.PathLike, checkpoint_format: str | None = None,
                        verbose: bool = True) -> LoadReport:
        """Load a transformers SegFormer file into ``model``: its encoder here, and the decode head
        too when the file is a fine-tuned one (its classifier when the class count matches)."""
        return load_segformer_checkpoint(model, checkpoint, checkpoint_format, verbose=verbose)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # newer transformers releases call it activation_checkpointing_*; older ones gradient_checkpointing_*
        prefix = "activation" if hasattr(self.model, "activation_checkpointing_enable") else "gradient"
        getattr(self.model, f"{prefix}_checkpointing_{'enable' if enable else 'disable'}")()

    def repeated_blocks(self) -> list[nn.Module]:
        """Every transformer layer of every stage (see :mod:`segzoo.compilation`)."""
        if hasattr(self.model, "stages"):  # newer transformers: stages[i].blocks
            return [block for stage in self.model.stages for block in stage.blocks]
        return [layer for stage in self.model.encoder.block for layer in stage]

    @property
    def grad_checkpointing(self) -> bool:
        if hasattr(type(self.model), "is_activation_checkpointing"):
            return bool(self.model.is_activation_checkpointing)
        return bool(self.model.is_gradient_checkpointing)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer groups on this module's parameter names, stage-wise: ``stem`` is the
        first (stride-4) patch embedding, then one group per stage (its downsampling patch
        embedding, blocks and norm), as if each stage were one ViT block. Both transformers
        layouts: ``stages.{i}`` (5.x) and ``encoder.{patch_embeddings,block,layer_norm}.{i}``
        (older). ``coarse`` changes nothing: a stage already is the coarse unit."""
        return dict(
            # tested before the stages, so stage 0's patch embedding is not counted with stage 0
            stem=[(r"^model\.stages\.0\.patch_embeddings\.", None),
                  (r"^model\.encoder\.patch_embeddings\.0\.", None)],
            blocks=[(r"^model\.stages\.(\d+)\.", None),
                    (r"^model\.encoder\.(?:patch_embeddings|block|layer_norm)\.(\d+)\.", None)],
        )

    def no_weight_decay(self) -> set[str]:
        """Empty: MiT has no position embeddings or tokens (its norms and biases are 1-D, which
        every optimizer recipe here already exempts)."""
        return set()


# SegformerConfig's encoder fields: what backbone_kwargs may set (the config itself takes any key silently)
MIT_ENCODER_FIELDS = (
    "num_encoder_blocks", "depths", "sr_ratios", "hidden_sizes", "patch_sizes", "strides", "num_attention_heads",
    "mlp_ratios", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range",
    "layer_norm_eps", "reshape_last_stage",
)
# SegformerConfig fields that create_model sets from its own keywords
_SET_BY_CREATE_MODEL = {"num_channels": "in_chans", "num_labels": "num_classes", "drop_path_rate": "drop_path_rate",
                        "decoder_hidden_size": "decoder_hidden_size", "classifier_dropout_prob": "dropout"}


def _check_encoder_fields(backbone_kwargs: dict[str, Any]) -> None:
    for key in backbone_kwargs:
        if key in MIT_ENCODER_FIELDS:
            continue
        if key in _SET_BY_CREATE_MODEL:
            raise ValueError(f"backbone_kwargs[{key!r}] is set by create_model's own keyword: pass "
                             f"{_SET_BY_CREATE_MODEL[key]}=... instead")
        raise ValueError(f"backbone_kwargs[{key!r}] is not a MiT encoder field{did_you_mean(key, MIT_ENCODER_FIELDS)}; "
                         f"MiT takes: "
                         f"{', '.join(MIT_ENCODER_FIELDS)}")


def create_backbone(
    spec: BackboneSpec,
    in_chans: int = 3,
    feature_indices: Sequence[int] | None = None,
    drop_path_rate: float | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    img_size: tuple[int, int] | None = None,
    keep_norm: bool = False,
) -> MiTBackbone:
    """Build the MiT encoder of ``spec`` (``drop_path_rate`` default 0.1, SegFormer's training setting)."""
    for name, value, why in (("feature_indices", feature_indices, "its four stages are the features"),
                             ("img_size", img_size, "it takes any input size as it is"),
                             ("keep_backbone_norm", keep_norm, "its stages end in their own norms")):
        if value:
            raise ValueError(f"{spec.name} is a hierarchical encoder and takes no {name} ({why}); leave {name} out")
    config = mit_encoder_config(spec, in_chans, 0.1 if drop_path_rate is None else drop_path_rate, backbone_kwargs)
    return MiTBackbone(SegformerModel(config))


BACKBONE_CLASS = MiTBackbone


def _install_output_hooks(model: SegformerModel) -> None:
    """transformers 5 installs its hidden-state capturing hooks on the first forward, under a
    threading lock that torch.compile cannot trace (a graph break); install them now."""
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:  # releases without the module return hidden states without hooks
        return
    maybe_install_capturing_hooks(model)

