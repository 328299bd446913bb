"""Re-exports the bridge trainers for nnU-Net's ``nnUNet_extTrainer`` lookup.

nnU-Net imports every module of an ``nnUNet_extTrainer`` folder as a top-level module.
Defining the trainers here would give them a second identity (``segzoo_nnunet_trainers.X``
next to ``nnunet_bridge.trainer.X``) that pickling and ``isinstance`` trip over, so this
folder only holds this one module, which imports the real classes from their package.
Point ``nnUNet_extTrainer`` here (``segzoo-nnunet env`` prints the line).
"""

from nnunet_bridge.trainer import (  # noqa: F401
    nnUNetTrainerNoDeepSupervision_segformer,
    nnUNetTrainerSegZoo,
    nnUNetTrainer_segformer,
)
