"""nnU-Net trainers for short benchmark runs (found through ``nnUNet_extTrainer``).

``SEGZOO_BENCH_EPOCHS`` and ``SEGZOO_BENCH_ITERATIONS`` set the run's length, so nnU-Net's
own U-Net trains exactly as long as the zoo model it is compared with; each training
epoch logs its throughput in the line the zoo trainer writes.
"""

from __future__ import annotations

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_bridge.throughput import LogsTrainingThroughput


class nnUNetTrainerShortRun(LogsTrainingThroughput, nnUNetTrainer):
    """nnU-Net's default trainer (U-Net, compiled on CUDA), shortened, with a throughput line per epoch."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("SEGZOO_BENCH_EPOCHS", 2))
        self.num_iterations_per_epoch = int(os.environ.get("SEGZOO_BENCH_ITERATIONS", 50))
        self.num_val_iterations_per_epoch = 1
