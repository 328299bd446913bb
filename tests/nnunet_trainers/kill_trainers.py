"""A zoo trainer killed right after its first ``checkpoint_latest.pth`` (found through ``nnUNet_extTrainer``).

The resume test needs a run that dies mid-training at a known point, every time: this trainer
sends itself SIGKILL (no cleanup, no ``finally``, as the OOM killer or a scheduler would) as soon
as the first checkpoint_latest.pth is on disk, once per fold folder; ``--c`` then finishes the run.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from nnunet_bridge.trainer import nnUNetTrainerSegZoo

KILLED_MARKER = "killed_after_first_checkpoint"


class nnUNetTrainerSegZooKilledAfterFirstCheckpoint(nnUNetTrainerSegZoo):
    """:class:`nnUNetTrainerSegZoo` that kills its own process after its first checkpoint_latest.pth."""

    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        marker = Path(self.output_folder) / KILLED_MARKER
        if os.path.basename(filename) == "checkpoint_latest.pth" and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
