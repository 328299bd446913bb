"""Checkpoints: nnU-Net's layout plus the resolved config, written atomically, checked on load."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from omegaconf import DictConfig

from ..checkpoint_files import load_checkpoint_file, plain_numbers, trusted_by_environment
from ..config import ConfigError, config_to_dict, load_config, resolved_initial_lr
from ..files import write_atomic
from ..plans import diff_dicts
from .base import ZooTrainerBase

__all__ = ["CheckpointLayoutError", "ZooCheckpoints", "resumed_config", "strip_module_prefix"]

# settings --c may change: how the run is executed and saved, not what it trains
RESUME_MAY_CHANGE = ("train.save_every", "train.compile_backend")


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
            # numpy scalars as Python numbers: the file loads with plain torch.load(weights_only=True)
            "logging": plain_numbers(self.logger.get_checkpoint()),
            "_best_ema": plain_numbers(self._best_ema),
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
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            # weights_only with nnU-Net's numpy scalars allowed: a resumed file runs no code unless trusted
            checkpoint = load_checkpoint_file(checkpoint, self.device, trusted=trusted_by_environment())
        where = str(filename_or_checkpoint)[:300]
        # the run continues as it was started: its configuration decides the optimiser, the
        # schedule and the batch size, which initialize() builds, so it is adopted first
        self._continue_with_checkpoint_config(checkpoint, where)
        if not self.was_initialized:
            self.initialize()
        weights = strip_module_prefix(checkpoint["network_weights"])
        self._check_layout(weights, checkpoint, where=where)
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

    def _continue_with_checkpoint_config(self, checkpoint: dict, where: str) -> None:
        """Adopt the checkpoint's resolved configuration (plus what ``--config`` may change, see
        :func:`resumed_config`); refuse a checkpoint of another model than the plans build."""
        saved = checkpoint.get("segzoo_config")
        if saved is None:  # not written by the bridge: nothing to adopt
            return
        saved_arch = checkpoint.get("segzoo_arch")
        if saved_arch is not None and saved_arch != self.segzoo_arch:
            raise ConfigError(
                f"checkpoint {where} was trained with another model than configuration "
                f"{self.configuration_name!r} plans now: " + ", ".join(diff_dicts(saved_arch, self.segzoo_arch))
                + ". Restore the plans the run started with (its results folder's plans.json holds them), "
                "or train the new model under a new configuration name (`segzoo-nnunet plan DATASET --name ...`)"
            )
        config_file = self.segzoo_config_file()
        config, notes = resumed_config(saved, config_file, where, epoch=int(checkpoint.get("current_epoch", 0)))
        planned = config_to_dict(self.segzoo_config)
        if config_file is None and planned != config_to_dict(config):
            notes.append("Note: continuing with the configuration the run started with (from the checkpoint); "
                         "the plans now say: " + ", ".join(diff_dicts(config_to_dict(config), planned)))
        if self.was_initialized and planned != config_to_dict(config):
            raise ConfigError(f"load_checkpoint({where}) after initialize(): the optimiser and schedule were "
                              "already built from another configuration. Load the checkpoint before initialize()")
        self.apply_config(config)
        for note in notes:
            self.print_to_log_file(note)

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


def resumed_config(saved: dict[str, Any], config_file: Optional[str], where: str = "the checkpoint",
                   epoch: int = 0) -> tuple[DictConfig, list[str]]:
    """The configuration ``--c`` continues with, and the notes to log.

    The checkpoint's resolved configuration, whatever the plans or the package defaults say
    now. A configuration file given with ``--c`` is applied on top of it and may raise
    ``train.num_epochs`` or lower ``train.initial_lr`` (notes) and change ``RESUME_MAY_CHANGE``; any
    other change would make
    the continued run differ from the one that was started and raises :class:`ConfigError`
    naming the fields.
    """
    started = load_config(saved)
    if not config_file:
        return started, []
    requested = load_config(saved, config_file)
    old, new = _flatten(config_to_dict(started)), _flatten(config_to_dict(requested))
    changed = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    notes, refused = [], []
    for key in changed:
        change = f"{key} ({old.get(key)!r} -> {new.get(key)!r})"
        if key == "train.num_epochs" and new[key] > old[key]:
            notes.append(f"Note: {config_file} extends train.num_epochs from {old[key]} to {new[key]} "
                         f"(continuing at epoch {epoch}); the learning rate now decays towards epoch {new[key]}")
        elif key == "train.initial_lr" and resolved_initial_lr(requested) < resolved_initial_lr(started):
            # the way back from a diverged run: its last good checkpoint, continued more gently
            notes.append(f"Note: {config_file} lowers train.initial_lr from {resolved_initial_lr(started):g} to "
                         f"{resolved_initial_lr(requested):g} for the rest of the run")
        elif key in RESUME_MAY_CHANGE:
            notes.append(f"Note: {config_file} changes {change} for the rest of the run")
        else:
            refused.append(change[:-1] + "; --c may only extend it)" if key == "train.num_epochs" else change)
    if refused:
        raise ConfigError(
            f"--c continues the run in {where} as it was started, but {config_file} changes "
            + ", ".join(refused) + ". With --c a configuration file may only raise train.num_epochs, lower train.initial_lr (and change "
            + " / ".join(RESUME_MAY_CHANGE) + "): drop the other keys from it, or start a new run "
            "(without --c, which starts this fold afresh, or under a new configuration name)"
        )
    return requested, notes


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def strip_module_prefix(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights saved from a DDP-wrapped network, without DDP's ``module.`` prefix."""
    return {k[7:] if k.startswith("module.") else k: v for k, v in weights.items()}
