"""nnU-Net's own U-Net on a shortened budget, for comparisons at demo and test scale.

``nnUNetTrainer`` trains 1000 epochs of 250 iterations; its shorter stock variants change
the epochs only. A comparison with a zoo model trained for a few epochs needs the U-Net on
the same budget, so this runs nnU-Net's own trainer class, unchanged but for the three loop
lengths, into its usual results folder (``nnUNetTrainer__nnUNetPlans__2d``): stock
``nnUNetv2_predict`` and ``segzoo-nnunet compare`` read it as any other nnU-Net run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from nnunetv2.run.run_training import get_trainer_from_args

__all__ = ["train_nnunet_baseline"]


def train_nnunet_baseline(
    dataset: str | int,
    fold: int = 0,
    num_epochs: int = 1000,
    num_iterations_per_epoch: int = 250,
    num_val_iterations_per_epoch: int = 50,
    configuration: str = "2d",
    plans_identifier: str = "nnUNetPlans",
    device: torch.device | str = "cpu",
) -> Path:
    """Train and validate ``nnUNetTrainer`` on one fold; returns the fold's output folder."""
    if min(num_epochs, num_iterations_per_epoch, num_val_iterations_per_epoch) < 1:
        raise ValueError("num_epochs, num_iterations_per_epoch and num_val_iterations_per_epoch must be >= 1")
    trainer = get_trainer_from_args(str(dataset), configuration, fold, "nnUNetTrainer", plans_identifier,
                                    device=torch.device(device))
    # read when training starts (the poly schedule is built from num_epochs then), so setting them here is enough
    trainer.num_epochs = int(num_epochs)
    trainer.num_iterations_per_epoch = int(num_iterations_per_epoch)
    trainer.num_val_iterations_per_epoch = int(num_val_iterations_per_epoch)
    trainer.run_training()
    trainer.perform_actual_validation(False)
    return Path(trainer.output_folder)
