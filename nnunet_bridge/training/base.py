"""The base every piece of the zoo trainer builds on: nnU-Net's trainer and one helper."""

from __future__ import annotations

from typing import Optional

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from omegaconf import DictConfig
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from ..network import ZooNetwork

__all__ = ["ZooTrainerBase"]


class ZooTrainerBase(nnUNetTrainer):
    """nnU-Net's trainer whose network is a :class:`~nnunet_bridge.network.ZooNetwork`.

    The pieces in this package each subclass it and override one concern; the trainer
    nnU-Net finds by name (:class:`nnunet_bridge.trainer.nnUNetTrainerSegZoo`) combines them.
    They read ``self.segzoo_config`` (the resolved configuration) and ``self.segzoo_arch``
    (the planned architecture), which that trainer sets.
    """

    def bare_network(self) -> ZooNetwork:
        """The zoo network itself, outside any DistributedDataParallel or torch.compile wrapper."""
        network = self.network.module if isinstance(self.network, DDP) else self.network
        return network._orig_mod if isinstance(network, OptimizedModule) else network

    def apply_config(self, config: DictConfig) -> None:
        """Make ``config`` the run's resolved configuration (``--c`` adopts the checkpoint's)."""
        raise NotImplementedError

    def segzoo_config_file(self) -> Optional[str]:
        """The train-time configuration file (``--config``), or None."""
        raise NotImplementedError
