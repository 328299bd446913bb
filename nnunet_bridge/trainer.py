"""nnUNetTrainerSegZoo: nnU-Net's trainer with only what a ViT zoo model needs changed.

The network comes from the plans (``segzoo-nnunet plan``), so stock ``nnUNetv2_train``
and ``nnUNetv2_predict`` work with this trainer. It is put together, nnU-Net style, from
pieces that each override one concern (``nnunet_bridge/training/``):

- :class:`~nnunet_bridge.training.data_parallel.DataParallelTraining`: nnU-Net's DDP mode on
  each process's own GPU, or on the CPU with gloo, wrapped after the compile;
- :class:`~nnunet_bridge.training.compilation.CompilesRegionally`: regional ``torch.compile``
  on CUDA by default, eager again if the first step fails to compile;
- :class:`~nnunet_bridge.training.divergence.StopsWhenLossDiverges`: stops after a few steps
  with a non-finite loss, without overwriting the last good checkpoint;
- :class:`~nnunet_bridge.training.optimisation.AdamWWarmupPoly`: AdamW with LoRA-aware
  groups, linear warm-up then poly decay (nnU-Net's Primus recipe), gradient clipping;
- :class:`~nnunet_bridge.training.losses.SetPredictionLoss`: ``DC_and_CE_loss`` for per-pixel
  heads, the model's own set loss for Mask2Former and EoMT;
- :class:`~nnunet_bridge.training.mask_annealing.AnnealsMaskedAttention`: EoMT's masked
  attention annealed from the epoch count;
- :class:`~nnunet_bridge.training.checkpoints.ZooCheckpoints`: atomic checkpoints with the
  resolved config inside; a checkpoint of another model layout is an error naming the keys;
- :class:`~nnunet_bridge.training.initial_weights.ZooInitialWeights`: pretrained or
  ``-pretrained_weights`` loaded in ``initialize`` (never at inference, never over ``--c``);
- :class:`~nnunet_bridge.throughput.LogsTrainingThroughput`: images/s per epoch.

This class adds the configuration (plans + optional YAML), no deep supervision (also not
switched back on around final validation) and the output folder's bookkeeping.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, config_to_dict, load_config, resolved_initial_lr
from .plans import NETWORK_CLASS_NAME, diff_dicts, stored_config
from .throughput import LogsTrainingThroughput
from .files import write_atomic
from .training.checkpoints import CheckpointLayoutError
from .training.compilation import COMPILE_ENV, CompilesRegionally
from .training.data_parallel import DataParallelTraining
from .training.divergence import StopsWhenLossDiverges
from .training.initial_weights import PRETRAINED_WEIGHTS_ENV, ZooInitialWeights
from .training.losses import SetPredictionLoss
from .training.mask_annealing import AnnealsMaskedAttention
from .training.optimisation import AdamWWarmupPoly

__all__ = [
    "nnUNetTrainerSegZoo",
    "nnUNetTrainer_segformer",
    "nnUNetTrainerNoDeepSupervision_segformer",
    "CONFIG_ENV",
    "PRETRAINED_WEIGHTS_ENV",
    "CheckpointLayoutError",
    "COMPILE_ENV",
]

CONFIG_ENV = "SEGZOO_NNUNET_CONFIG"  # a YAML whose train section overrides the planned one
CONFIG_FILENAME = "segzoo_config.yaml"


class nnUNetTrainerSegZoo(LogsTrainingThroughput, DataParallelTraining, StopsWhenLossDiverges, CompilesRegionally,
                          AdamWWarmupPoly, SetPredictionLoss, AnnealsMaskedAttention, ZooInitialWeights):
    """Trains the zoo model that the configuration's plans name (see ``nnunet_bridge.plans``)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        conf = self.configuration_manager.configuration
        arch = conf.get("architecture", {})
        if arch.get("network_class_name") != NETWORK_CLASS_NAME or stored_config(conf) is None:
            raise ConfigError(
                f"configuration {configuration!r} is not a segzoo configuration (its network is "
                f"{arch.get('network_class_name')!r}); add one with `segzoo-nnunet plan DATASET --model NAME` "
                f"and train that (e.g. 2d_segformer_dinov3_large)"
            )
        self.segzoo_arch: dict[str, Any] = arch["arch_kwargs"]
        self.segzoo_config = load_config(stored_config(conf), self.segzoo_config_file())
        self._check_config_matches_plans(conf)
        self.enable_deep_supervision = False
        self.apply_config(self.segzoo_config)

    def segzoo_config_file(self) -> str | None:
        return os.environ.get(CONFIG_ENV) or None

    def apply_config(self, config: DictConfig) -> None:
        """Sets nnU-Net's attributes from ``config`` and shows it as the configuration's stored
        config, so nnU-Net's log header ("the configuration used by this training") is the run's."""
        conf = self.configuration_manager.configuration
        self.segzoo_config = config
        train = config.train
        self.initial_lr = resolved_initial_lr(config)
        self.weight_decay = float(train.weight_decay)
        self.num_epochs = int(train.num_epochs)
        self.num_iterations_per_epoch = int(train.num_iterations_per_epoch)
        self.num_val_iterations_per_epoch = int(train.num_val_iterations_per_epoch)
        self.oversample_foreground_percent = float(train.oversample_foreground_percent)
        self.save_every = int(train.save_every)
        if train.batch_size is not None:
            conf["batch_size"] = int(train.batch_size)
        conf["segzoo"] = config_to_dict(config)  # in memory only: nnU-Net saves the plans, not this copy

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """Zoo models have one output; nnU-Net's switch (also flipped around validation) is a no-op."""

    def on_train_start(self) -> None:
        self._check_results_plans_unchanged()
        super().on_train_start()
        if self.local_rank == 0:
            write_atomic(os.path.join(self.output_folder, CONFIG_FILENAME),
                         OmegaConf.to_yaml(self.segzoo_config).encode())

    def _check_config_matches_plans(self, conf: dict[str, Any]) -> None:
        """A train-time YAML may change the train section, not the planned model, LoRA or patch size."""
        planned = stored_config(conf)
        resolved = config_to_dict(self.segzoo_config)
        differences = [f"model.{d}" for d in diff_dicts(planned["model"], resolved["model"])]
        differences += [f"lora.{d}" for d in diff_dicts(planned["lora"], resolved["lora"])]
        if resolved["train"]["patch_size"] not in (None, conf["patch_size"]):
            differences.append(f"train.patch_size ({conf['patch_size']} -> {resolved['train']['patch_size']})")
        if differences:
            raise ConfigError(
                f"the configuration file ({os.environ.get(CONFIG_ENV)}) changes what configuration "
                f"{self.configuration_name!r} was planned with: {', '.join(differences)}. Plan it as a new "
                "configuration (`segzoo-nnunet plan DATASET --config FILE --name 2d_my_variant`)"
            )

    def _check_results_plans_unchanged(self) -> None:
        """nnU-Net rewrites the results folder's plans.json at every start; refuse to do that
        over a trained configuration whose architecture has changed since."""
        path = os.path.join(self.output_folder_base, "plans.json")
        if not os.path.isfile(path):
            return
        with open(path) as f:
            previous = json.load(f)["configurations"].get(self.configuration_name, {})
        old_arch = previous.get("architecture")
        if old_arch is not None and old_arch != self.configuration_manager.configuration["architecture"]:
            raise ConfigError(
                f"{self.output_folder_base} was trained with another architecture for {self.configuration_name!r}: "
                + ", ".join(diff_dicts(old_arch, self.configuration_manager.configuration["architecture"]))
                + ". Restore the plans or train under a new configuration name"
            )


class nnUNetTrainer_segformer(nnUNetTrainerSegZoo):
    """Compatibility name of :class:`nnUNetTrainerSegZoo` (docs/compatibility.md)."""


class nnUNetTrainerNoDeepSupervision_segformer(nnUNetTrainerSegZoo):
    """Compatibility name for the variant without deep supervision (which every zoo trainer is)."""
