"""The network nnU-Net builds from the plans: a zoo model behind a thin wrapper.

A zoo configuration's ``architecture.network_class_name`` is
``nnunet_bridge.network.build_zoo_network``; nnU-Net's ``get_network_from_plans`` calls
it with ``input_channels``, ``num_classes``, ``deep_supervision`` and the configuration's
``arch_kwargs``. That happens in training *and* in ``nnUNetv2_predict``, so the builder
never downloads weights: the trainer loads pretrained weights in ``initialize``.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

import segzoo

from .config import zoo_model_name

__all__ = ["ZooNetwork", "build_zoo_network", "arch_kwargs_from_config", "create_zoo_model"]

# nnU-Net's predictor accumulates logits in a float16 buffer (max 65504) over overlapping
# tiles; bounded logits keep that sum finite without changing any argmax or softmax.
_EVAL_LOGIT_BOUND = 1e4


class ZooNetwork(nn.Module):
    """A zoo model as nnU-Net sees it.

    * input: nnU-Net's preprocessed patch; with ``input_normalization="backbone"`` it is in
      [0, 1] (channels named ``rgb_to_0_1`` / ``rescale_to_0_1``) and the backbone's mean/std
      are applied here, because nnU-Net only looks normalisation classes up in its own package;
    * on CUDA the model runs under bf16 autocast (inside nnU-Net's fp16 autocast, which
      overflows in ViT attention) and returns float32 logits;
    * no ``initialize`` attribute: nnU-Net would apply it to every submodule and wipe the
      zoo's initialisation.
    """

    def __init__(self, model: nn.Module, input_normalization: str = "none"):
        super().__init__()
        if input_normalization not in ("backbone", "none"):
            raise ValueError(f"input_normalization must be 'backbone' or 'none', got {input_normalization!r}")
        self.model = model
        self.input_normalization = input_normalization
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        channels = int(getattr(model, "in_chans", len(cfg.get("mean", (0.0,)))))
        mean = torch.tensor(cfg.get("mean", [0.0] * channels), dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(cfg.get("std", [1.0] * channels), dtype=torch.float32).view(1, -1, 1, 1)
        # not persistent: the checkpoint holds the model's weights only; mean/std come from its pretrained_cfg
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: torch.Tensor) -> Any:
        x = x.float()
        if self.input_normalization == "backbone":
            x = (x - self.mean) / self.std
        if x.is_cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = self.model(x)
        else:
            out = self.model(x)
        out = _to_float32(out)
        if not self.training and isinstance(out, torch.Tensor):
            out = out.clamp(-_EVAL_LOGIT_BOUND, _EVAL_LOGIT_BOUND)
        return out


def build_zoo_network(
    input_channels: int,
    num_classes: int,
    deep_supervision: bool = False,
    model_name: str = "",
    model_kwargs: dict[str, Any] | None = None,
    lora: dict[str, Any] | None = None,
    input_normalization: str = "none",
) -> ZooNetwork:
    """Build the zoo model named in the plans (random weights; the trainer loads pretrained ones).

    ``deep_supervision`` is accepted because nnU-Net always passes it; zoo models have a
    single output, so it is ignored.
    """
    model = create_zoo_model(model_name, input_channels, num_classes, model_kwargs, lora)
    return ZooNetwork(model, input_normalization)


def create_zoo_model(
    model_name: str,
    in_chans: int,
    num_classes: int,
    model_kwargs: dict[str, Any] | None = None,
    lora: dict[str, Any] | None = None,
    **extra: Any,
) -> nn.Module:
    """``segzoo.create_model`` with the plans' kwargs; ``extra`` = pretrained / checkpoint_path."""
    if not model_name:
        raise ValueError("the plans' arch_kwargs lack model_name; re-run `segzoo-nnunet plan`")
    kwargs = dict(model_kwargs or {})
    if lora:
        kwargs["lora"] = dict(lora)
    return segzoo.create_model(model_name, num_classes=num_classes, in_chans=in_chans, **kwargs, **extra)


def arch_kwargs_from_config(config: Any, input_normalization: str) -> dict[str, Any]:
    """The plans' ``arch_kwargs`` for a resolved bridge config (what rebuilds the network anywhere)."""
    model = config.model
    name = zoo_model_name(config)
    if model.pretrained_tag:
        name = f"{name}.{model.pretrained_tag}"
    model_kwargs: dict[str, Any] = dict(grad_checkpointing=bool(model.grad_checkpointing))
    # unset -> the model's own default (UperNet's width differs from SegFormer's; MiT takes no neck and
    # trains with stochastic depth 0.1)
    if model.drop_path_rate is not None:
        model_kwargs["drop_path_rate"] = float(model.drop_path_rate)
    if model.decoder_hidden_size is not None:
        model_kwargs["decoder_hidden_size"] = int(model.decoder_hidden_size)
    if model.neck is not None:
        model_kwargs["neck"] = str(model.neck)
    model_kwargs.update(_plain(model.kwargs))
    lora = None
    if config.lora.enabled:
        lora = dict(
            r=int(config.lora.r),
            alpha=float(config.lora.alpha),
            dropout=float(config.lora.dropout),
            target_modules=[str(m) for m in config.lora.target_modules],
        )
    return dict(model_name=name, model_kwargs=model_kwargs, lora=lora, input_normalization=input_normalization)


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return dict(value)


def _to_float32(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return {k: _to_float32(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float32(v) for v in out)
    return out
