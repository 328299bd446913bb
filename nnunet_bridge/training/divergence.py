"""Stop a run whose training loss is no longer finite, before it overwrites its last good checkpoint."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .base import ZooTrainerBase

__all__ = ["MAX_NONFINITE_STEPS", "StopsWhenLossDiverges", "TrainingDivergedError"]

MAX_NONFINITE_STEPS = 3  # consecutive steps; one may be an fp16 overflow the grad scaler skips


class TrainingDivergedError(RuntimeError):
    """The training loss stayed NaN or Inf; the message names where, why it may be and the fix."""


class StopsWhenLossDiverges(ZooTrainerBase):
    """Stops training after :data:`MAX_NONFINITE_STEPS` consecutive steps with a non-finite loss
    (nnU-Net trains on for as many epochs as planned). While the loss is non-finite, or the
    weights are, no checkpoint is written, so ``checkpoint_latest.pth`` keeps the last state
    from before the divergence for ``--c``. In a DDP run the ranks decide together (a NaN in one
    rank's batch reaches every rank's weights through the gradient all-reduce)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._nonfinite: list[tuple[int, int, float]] = []  # (epoch, iteration, loss) of the current streak
        self._iteration = 0  # of the current epoch
        self._latest_saved_epoch: int | None = None  # epochs done in the checkpoint_latest.pth written here

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._iteration = 0

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)
        loss = float(np.mean(result["loss"]))
        bad = not np.isfinite(loss)
        if self.is_ddp:  # every rank counts the same streak, so all stop at the same step
            flag = torch.tensor([float(bad)], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bad = bool(flag.item())
        if bad:
            self._nonfinite.append((self.current_epoch, self._iteration, loss))
        else:
            self._nonfinite.clear()
        self._iteration += 1
        if len(self._nonfinite) >= MAX_NONFINITE_STEPS:
            self._stop_diverged()
        return result

    def save_checkpoint(self, filename: str) -> None:
        """Not while diverging: the weights may already be NaN, and the last good checkpoint is
        what ``--c`` needs."""
        if self._nonfinite or not _weights_finite(self.bare_network()):
            self.print_to_log_file(f"Not writing {os.path.basename(filename)}: the training loss or the weights "
                                   "are not finite; the previous checkpoint stays")
            return
        super().save_checkpoint(filename)
        if os.path.basename(filename) == "checkpoint_latest.pth":
            self._latest_saved_epoch = self.current_epoch + 1

    def on_train_end(self) -> None:
        if self._nonfinite:  # the last epoch ended diverging: no checkpoint_final, keep checkpoint_latest
            self._stop_diverged()
        super().on_train_end()

    def _stop_diverged(self) -> None:
        message = divergence_message(self._nonfinite, self.output_folder, self._latest_saved_epoch,
                                     self.grad_scaler is not None)
        self.print_to_log_file(message)
        _finish_data_loaders(self)
        raise TrainingDivergedError(message)


def divergence_message(steps: list[tuple[int, int, float]], output_folder: str, latest_epoch: int | None,
                       mixed_precision: bool) -> str:
    """Where the loss stopped being finite, the likely causes and how to continue."""
    (epoch0, it0, _), (epoch1, it1, _) = steps[0], steps[-1]
    losses = ", ".join(str(loss) for *_, loss in steps)
    latest = os.path.join(output_folder, "checkpoint_latest.pth")
    if os.path.isfile(latest):
        kept = (f"{latest} is kept from before the divergence"
                + (f" (after epoch {latest_epoch - 1})" if latest_epoch is not None else "")
                + ". To go on from there with a lower learning rate: train the fold again with --c and a "
                  "--config YAML that sets a lower train.initial_lr")
    else:
        kept = "no checkpoint_latest.pth was written before it; train again with a lower train.initial_lr"
    causes = ["a learning rate too high (train.initial_lr)", "input images with NaN or Inf values"]
    if mixed_precision:
        causes.append("an fp16 overflow under mixed precision")
    return (f"training diverged: the training loss was not finite for {len(steps)} consecutive steps ({losses}), "
            f"from epoch {epoch0} iteration {it0} to epoch {epoch1} iteration {it1}. Likely causes: "
            f"{', '.join(causes)}. {kept}")


def _weights_finite(network: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in network.parameters())


def _finish_data_loaders(trainer: ZooTrainerBase) -> None:
    """nnU-Net's ``on_train_end`` stops the augmentation workers; a stop by error must too."""
    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        finish = getattr(loader, "_finish", None)
        if finish is not None:
            stdout, sys.stdout = sys.stdout, open(os.devnull, "w")  # their shutdown prints
            try:
                finish()
            finally:
                sys.stdout.close()
                sys.stdout = stdout
