"""Checkpoints: nnU-Net's layout plus the resolved config, written atomically, checked on load."""

from __future__ import annotations

from typing import Union

import torch

from ..config import config_to_dict
from ..files import write_atomic
from ..plans import diff_dicts
from .base import ZooTrainerBase

__all__ = ["CheckpointLayoutError", "ZooCheckpoints", "strip_module_prefix"]


class CheckpointLayoutError(RuntimeError):
    """A checkpoint whose network does not fit the configuration's model (names the keys)."""


class ZooCheckpoints(ZooTrainerBase):
    """``save_checkpoint`` / ``load_checkpoint`` with nnU-Net's keys (so its predictor and
    ``--c`` read them) plus ``segzoo_config``, ``segzoo_arch`` and the scheduler state."""

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus the resolved config, the arch kwargs and the scheduler
        state, written to a temporary file and renamed, so a kill never leaves a torn file."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = {
            "network_weights": self.bare_network().state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "lr_scheduler_state": self.lr_scheduler.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            "segzoo_config": config_to_dict(self.segzoo_config),
            "segzoo_arch": self.segzoo_arch,
        }
        write_atomic(filename, lambda path: torch.save(checkpoint, path))

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        """Resume epoch, weights, optimizer, scheduler and logs (``--c``); refuses a checkpoint
        whose model layout differs from this configuration's, naming the differing keys."""
        if not self.was_initialized:
            self.initialize()
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            # nnU-Net checkpoints hold numpy logs and the plans, so (as nnU-Net) not weights_only
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        weights = strip_module_prefix(checkpoint["network_weights"])
        self._check_layout(weights, checkpoint, where=str(filename_or_checkpoint)[:300])
        self.bare_network().load_state_dict(weights)
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get(
            "inference_allowed_mirroring_axes", self.inference_allowed_mirroring_axes)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if checkpoint.get("lr_scheduler_state"):
            self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler_state"])
        if self.grad_scaler is not None and checkpoint.get("grad_scaler_state") is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
        saved_train = (checkpoint.get("segzoo_config") or {}).get("train")
        now_train = config_to_dict(self.segzoo_config)["train"]
        if saved_train and saved_train != now_train:
            self.print_to_log_file("Note: train settings differ from the checkpoint's: "
                                   + ", ".join(diff_dicts(saved_train, now_train)))

    def _check_layout(self, weights: dict[str, torch.Tensor], checkpoint: dict, where: str,
                      allowed: set[str] = frozenset()) -> None:
        own = self.bare_network().state_dict()
        missing = sorted(set(own) - set(weights))
        unexpected = sorted(set(weights) - set(own))
        shapes = sorted(k for k in set(own) & set(weights) if k not in allowed and own[k].shape != weights[k].shape)
        if not (missing or unexpected or shapes):
            return
        lines = [f"checkpoint {where} does not fit configuration {self.configuration_name!r}:"]
        for label, keys in (("missing in checkpoint", missing), ("not in this model", unexpected)):
            if keys:
                lines.append(f"  {label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")
        if shapes:
            lines.append("  different shapes: " + ", ".join(
                f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in shapes[:8]))
        if checkpoint.get("segzoo_arch") is not None:
            lines.append("  model settings that differ: "
                         + (", ".join(diff_dicts(checkpoint["segzoo_arch"], self.segzoo_arch)) or "none"))
        raise CheckpointLayoutError("\n".join(lines))


def strip_module_prefix(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights saved from a DDP-wrapped network, without DDP's ``module.`` prefix."""
    return {k[7:] if k.startswith("module.") else k: v for k, v in weights.items()}
