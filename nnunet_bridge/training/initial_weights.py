"""The weights a new run starts from: another run's checkpoint, or the backbone's published weights."""

from __future__ import annotations

import os
from typing import Any, Union

import segzoo

from ..checkpoint_files import load_checkpoint_file, trusted_by_environment
from .checkpoints import ZooCheckpoints, strip_module_prefix

__all__ = ["PRETRAINED_WEIGHTS_ENV", "ZooInitialWeights"]

PRETRAINED_WEIGHTS_ENV = "SEGZOO_NNUNET_PRETRAINED_WEIGHTS"  # an nnU-Net checkpoint of the same zoo model


class ZooInitialWeights(ZooCheckpoints):
    """Loads initial weights in ``initialize`` (never at inference, never over ``--c``/``--val``):
    ``-pretrained_weights`` (another run of the same zoo model; a classifier of another class
    count is re-initialised, and said so), else the backbone's published weights."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._weights_from_checkpoint = False  # set by load_checkpoint (--c, --val)
        super().__init__(*args, **kwargs)

    def initialize(self) -> None:
        super().initialize()
        self._load_initial_weights()
        model = self.bare_network().model
        if hasattr(model, "print_trainable_parameters"):
            model.print_trainable_parameters(detailed=True)

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        if not self.was_initialized:
            self._weights_from_checkpoint = True  # no download or -pretrained_weights just to overwrite them
        super().load_checkpoint(filename_or_checkpoint)

    def _load_initial_weights(self) -> None:
        """Weights a new run starts from: another run's checkpoint, else the backbone's published weights."""
        if self._weights_from_checkpoint:
            return  # --c / --val: the checkpoint provides every weight, whatever the environment says
        from_run = os.environ.get(PRETRAINED_WEIGHTS_ENV)
        if from_run:
            self._load_run_weights(from_run)
            return
        model_cfg = self.segzoo_config.model
        if not (model_cfg.pretrained or model_cfg.checkpoint_path):
            self.print_to_log_file("Training from random initialisation (model.pretrained is false)")
            return
        arch = self.segzoo_arch
        where = f"checkpoint_path={model_cfg.checkpoint_path}" if model_cfg.checkpoint_path else "from the Hub"
        try:  # into the model as built (LoRA included): no second model just to copy its weights
            segzoo.load_backbone_weights(self.bare_network().model, checkpoint_path=model_cfg.checkpoint_path or None)
        except Exception as err:
            raise RuntimeError(
                f"could not load the pretrained weights of {arch['model_name']} ({where}): "
                f"{type(err).__name__}: {err}. Set model.pretrained: false to train from scratch, or "
                "model.checkpoint_path to a local file"
            ) from err
        self.print_to_log_file(f"Loaded pretrained backbone weights of {arch['model_name']} ({where})")

    def _load_run_weights(self, path: str) -> None:
        """``-pretrained_weights``: all weights of another run of the same zoo model; head layers
        whose shape differs (another number of classes) are re-initialised, and said so."""
        checkpoint = load_checkpoint_file(path, trusted=trusted_by_environment())  # runs no code unless trusted
        weights = strip_module_prefix(checkpoint["network_weights"])
        own = self.bare_network().state_dict()
        head = "model.decode_head."
        reinit = [k for k in own if k in weights and own[k].shape != weights[k].shape and k.startswith(head)]
        self._check_layout(weights, checkpoint, where=path, allowed=set(reinit))
        kept = {k: v for k, v in weights.items() if k not in reinit}
        self.bare_network().load_state_dict({**own, **kept})
        self.print_to_log_file(f"Loaded weights from {path}")
        if reinit:
            self.print_to_log_file(
                "Re-initialised (different number of classes): "
                + ", ".join(f"{k} {tuple(weights[k].shape)} -> {tuple(own[k].shape)}" for k in reinit))
