"""Mix Transformer (MiT-b0 ... b5), SegFormer's own hierarchical encoder, from transformers.

Unlike the plain ViTs, MiT already gives strides 4/8/16/32 and works on any image size
(overlapping strided-conv patch embeddings, no position embeddings), so it needs no
neck and no padding: the zoo's ``segformer_mit_*`` models feed transformers'
``SegformerModel`` the image as it is and match transformers' logits exactly.
"""

from __future__ import annotations


from typing import Any

import torch
from torch import nn
from transformers import SegformerConfig, SegformerModel

from .._validation import did_you_mean, positive_int

__all__ = ["MIT_CONFIGS", "MiTBackbone", "create_mit_backbone", "mit_segformer_config"]

# Architecture of each size (Xie et al. 2021, Table 6); every other field is SegformerConfig's
# default (heads 1/2/5/8, reduction ratios 8/4/2/1, patch sizes 7/3/3/3, strides 4/2/2/2).
MIT_CONFIGS: dict[str, dict[str, Any]] = {
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
    "b3": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 18, 3], decoder_hidden_size=768),
    "b4": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 8, 27, 3], decoder_hidden_size=768),
    "b5": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 6, 40, 3], decoder_hidden_size=768),
}

# stage 1 has a sequence-reduction conv of kernel 8 on the stride-4 map: below 29 px it has nothing to convolve
MIT_MIN_INPUT_SIZE = 32


def mit_segformer_config(
    size: str,
    num_classes: int,
    in_chans: int = 3,
    drop_path_rate: float = 0.1,
    decoder_hidden_size: int | None = None,
    dropout: float = 0.1,
    backbone_kwargs: dict[str, Any] | None = None,
) -> SegformerConfig:
    """transformers' ``SegformerConfig`` of MiT-``size`` with a ``num_classes`` decode head.

    ``backbone_kwargs`` override any ``SegformerConfig`` encoder field (e.g. tiny test
    sizes: ``hidden_sizes=[16, 32, 32, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1]``).
    """
    if size not in MIT_CONFIGS:
        raise ValueError(f"Unknown MiT size {size!r}; choose one of {sorted(MIT_CONFIGS)}")
    _check_encoder_fields(backbone_kwargs or {})
    fields: dict[str, Any] = dict(MIT_CONFIGS[size])
    fields.update(backbone_kwargs or {})
    if decoder_hidden_size is not None:
        fields["decoder_hidden_size"] = decoder_hidden_size
    fields["decoder_hidden_size"] = positive_int("decoder_hidden_size", fields["decoder_hidden_size"],
                                                 "the decode head's width")
    return SegformerConfig(
        num_channels=in_chans,
        num_labels=num_classes,
        drop_path_rate=drop_path_rate,
        classifier_dropout_prob=dropout,
        **fields,
    )


class MiTBackbone(nn.Module):
    """transformers' ``SegformerModel`` as a feature extractor: four NCHW maps at strides 4/8/16/32.

    ``patch_size`` is the stride of the first (overlapping) patch embedding, for
    reporting; ``pad_multiple = 1`` tells the Segmenter not to pad (MiT takes any
    size, and padding would change its outputs), ``min_input_size`` is the smallest
    side the encoder accepts.
    """

    pad_multiple = 1
    min_input_size = MIT_MIN_INPUT_SIZE

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


def create_mit_backbone(config: SegformerConfig) -> MiTBackbone:
    """Build MiT from a ``SegformerConfig`` (see :func:`mit_segformer_config`)."""
    return MiTBackbone(SegformerModel(config))


def _install_output_hooks(model: SegformerModel) -> None:
    """transformers 5 installs its hidden-state capturing hooks on the first forward, under a
    threading lock that torch.compile cannot trace (a graph break); install them now."""
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:  # releases without the module return hidden states without hooks
        return
    maybe_install_capturing_hooks(model)

