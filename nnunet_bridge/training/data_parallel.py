"""nnU-Net's DDP mode for zoo models: on CUDA with NCCL, and on the CPU with gloo."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch
import torch.distributed as dist
from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as nnunet_trainer_module
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import ConfigError
from ..distributed import ProcessPlace, rank_device, torchrun_place
from .base import ZooTrainerBase
from .sync_batchnorm import let_sync_batchnorm_run_on_cpu

__all__ = ["DataParallelTraining", "check_batch_divides"]


class DataParallelTraining(ZooTrainerBase):
    """nnU-Net's DDP mode (on when a process group is initialised before the trainer is built:
    ``segzoo-nnunet train`` under torchrun or with ``-num_gpus N``, or ``nnUNetv2_train -num_gpus N``),
    with what nnU-Net leaves out:

    - the device: nnU-Net takes ``cuda:<global rank>``, a GPU that only exists on the first
      machine; here it is ``cuda:<LOCAL_RANK>``, or the CPU when the run asked for it (gloo);
    - the wrap: ``DistributedDataParallel`` is built once training starts, after the regional
      compile (so DDP wraps the compiled model), with the local GPU as ``device_ids`` (none on
      the CPU) and without ``find_unused_parameters`` (every trainable parameter gets a gradient);
    - BatchNorm: nnU-Net's SyncBatchNorm conversion stays; on the CPU those layers become
      :class:`~nnunet_bridge.training.sync_batchnorm.CpuSyncBatchNorm`;
    - the batch: the global batch size must divide by the number of processes.

    ``local_rank`` keeps nnU-Net's meaning (the global rank): rank 0 alone writes checkpoints,
    logs and ``segzoo_config.yaml``, on one shared results folder.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp:
            self.device = process_device(device)
            if self.device.type != "cuda":
                self.grad_scaler = None  # nnU-Net made one for the CUDA device it assumed

    def _set_batch_size_and_oversample(self) -> None:
        if self.is_ddp:
            check_batch_divides(self.configuration_manager.batch_size, dist.get_world_size())
        super()._set_batch_size_and_oversample()

    def initialize(self) -> None:
        if not self.is_ddp:
            super().initialize()
            return
        with _nnunet_ddp_wrap_deferred():
            super().initialize()
        if self.device.type == "cpu":
            converted = let_sync_batchnorm_run_on_cpu(self.network)
            if converted:
                self.print_to_log_file(f"{converted} SyncBatchNorm layers sync over gloo on the CPU")

    def on_train_start(self) -> None:
        super().on_train_start()  # the regional compile happens in here, before the wrap
        if self.is_ddp and not isinstance(self.network, DDP):
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = DDP(self.network, device_ids=device_ids)
            self.print_to_log_file(
                f"DistributedDataParallel over {dist.get_world_size()} processes ({dist.get_backend()}), "
                f"batch {self.batch_size} per process")


def process_device(requested: torch.device) -> torch.device:
    """This process's device in a DDP run (:func:`~nnunet_bridge.distributed.rank_device`): its
    machine's GPU numbered ``LOCAL_RANK``, or the CPU if asked for."""
    if requested.type != "cuda":
        return torch.device(requested.type)
    place = torchrun_place() if "LOCAL_RANK" in os.environ else None
    if place is None:  # nnU-Net's own -num_gpus sets no LOCAL_RANK: one machine, local rank = rank
        place = ProcessPlace(dist.get_rank(), dist.get_world_size(), dist.get_rank(), dist.get_world_size())
    return rank_device(place, requested)


def check_batch_divides(batch_size: int, world_size: int) -> None:
    """Each process trains ``batch_size / world_size`` images per step; refuse what does not divide."""
    if batch_size % world_size:
        below = batch_size - batch_size % world_size
        examples = " or ".join(str(b) for b in (below, below + world_size) if b)
        raise ConfigError(
            f"the batch size {batch_size} does not divide among {world_size} processes; set train.batch_size "
            f"to a multiple of {world_size} (e.g. {examples}) in the --config YAML, or start a number of "
            f"processes that divides {batch_size}"
        )


@contextlib.contextmanager
def _nnunet_ddp_wrap_deferred() -> Iterator[None]:
    """nnU-Net wraps the network in ``initialize`` with ``device_ids=[global rank]`` (wrong on the
    CPU and past the first machine) and before any compile; within this block that wrap is a
    no-op and :meth:`DataParallelTraining.on_train_start` wraps instead."""
    original = nnunet_trainer_module.DDP

    def unwrapped(module: torch.nn.Module, *_args: Any, **_kwargs: Any) -> torch.nn.Module:
        return module

    nnunet_trainer_module.DDP = unwrapped
    try:
        yield
    finally:
        nnunet_trainer_module.DDP = original
