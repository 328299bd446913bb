"""nnunet_bridge: train, continue, validate and predict any segzoo model with nnU-Net v2.

The only package of the project that imports nnunetv2. Entry points: the
``segzoo-nnunet`` command (:mod:`nnunet_bridge.cli`), the trainer
``nnUNetTrainerSegZoo`` (:mod:`nnunet_bridge.trainer`) and :func:`nnunet_bridge.plans.plan`.
"""

from __future__ import annotations

import os

__all__ = ["EXT_TRAINER_DIR", "ensure_ext_trainer_path"]

EXT_TRAINER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext_trainers")


def ensure_ext_trainer_path() -> str:
    """Add the bridge's trainer folder to ``nnUNet_extTrainer`` (keeping the user's entries)
    so nnU-Net's name lookup finds ``nnUNetTrainerSegZoo``; returns the new value."""
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if EXT_TRAINER_DIR not in current:
        current.append(EXT_TRAINER_DIR)
    os.environ["nnUNet_extTrainer"] = os.pathsep.join(current)
    return os.environ["nnUNet_extTrainer"]
