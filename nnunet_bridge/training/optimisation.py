"""AdamW with LoRA-aware parameter groups, linear warm-up then poly decay, gradient clipping."""

from __future__ import annotations

from typing import Any

import torch
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn

from segzoo.optim import param_groups

from .base import ZooTrainerBase

__all__ = ["AdamWWarmupPoly", "WarmupPolyLR", "build_param_groups"]


class AdamWWarmupPoly(ZooTrainerBase):
    """nnU-Net's Primus recipe: AdamW (fused on CUDA), warm-up then poly decay, per-group rates
    (layer decay, head multiplier, no decay on norms and biases), and ``train.gradient_clip``."""

    def configure_optimizers(self):
        train = self.segzoo_config.train
        groups = build_param_groups(self.bare_network(), self.initial_lr, self.weight_decay,
                                    float(train.layer_decay), float(train.head_lr_mult))
        optimizer = torch.optim.AdamW(
            groups, lr=self.initial_lr, weight_decay=self.weight_decay, betas=tuple(train.betas),
            fused=self.device.type == "cuda",
        )
        scheduler = WarmupPolyLR(optimizer, int(train.warmup_epochs), self.num_epochs, float(train.poly_exponent))
        return optimizer, scheduler

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            loss = self.loss(self.network(data), target)
        clip = float(self.segzoo_config.train.gradient_clip)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(self.network.parameters(), clip)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(self.network.parameters(), clip)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy()}


class WarmupPolyLR(torch.optim.lr_scheduler.LRScheduler):
    """Linear warm-up over ``warmup_epochs``, then nnU-Net's poly decay to ``num_epochs``, in one scheduler.

    nnU-Net steps its scheduler once per epoch with the epoch index
    (``lr_scheduler.step(current_epoch)``), so the learning rate is a closed-form function
    of the epoch and ``--c`` lands on the same value. Each parameter group keeps its own
    base rate (``initial_lr``), so LoRA-aware groups with different rates scale together.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_epochs: int, num_epochs: int, exponent: float = 0.9):
        if not 0 <= warmup_epochs < num_epochs:
            raise ValueError(f"warmup_epochs ({warmup_epochs}) must be in [0, num_epochs={num_epochs})")
        self.warmup_epochs = int(warmup_epochs)
        self.num_epochs = int(num_epochs)
        self.exponent = float(exponent)
        super().__init__(optimizer, last_epoch=-1)

    def factor(self, epoch: int) -> float:
        """Multiplier of each group's base rate at ``epoch`` (0-based)."""
        epoch = max(0, int(epoch))
        if epoch < self.warmup_epochs:
            return (epoch + 1) / self.warmup_epochs
        progress = (epoch - self.warmup_epochs) / (self.num_epochs - self.warmup_epochs)
        return max(0.0, 1.0 - progress) ** self.exponent

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the position (``--c``); the schedule's shape and base rates stay the
        configuration's, so a ``num_epochs`` extended at ``--c`` decays to the new end and a
        lowered ``initial_lr`` takes effect, instead of the saved ones."""
        shape, base_lrs = (self.warmup_epochs, self.num_epochs, self.exponent), list(self.base_lrs)
        super().load_state_dict(state_dict)
        self.warmup_epochs, self.num_epochs, self.exponent = shape
        self.base_lrs = base_lrs
        for group, base in zip(self.optimizer.param_groups, base_lrs):
            group["initial_lr"] = base

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        """``step(current_epoch)`` as nnU-Net calls it; ``step()`` advances by one."""
        self.last_epoch = self.last_epoch + 1 if epoch is None else int(epoch)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def build_param_groups(
    model: nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0, head_lr_mult: float = 1.0
) -> list[dict[str, Any]]:
    """Trainable parameters in optimiser groups, by :func:`segzoo.optim.param_groups`.

    No weight decay on biases, norms, position embeddings and tokens; frozen parameters
    (LoRA's base weights) left out; optional layer-wise LR decay through the ViT blocks and
    a neck/head LR multiplier. ``model`` may be the bridge's network wrapper.
    """
    zoo_model = getattr(model, "model", model)  # ZooNetwork wraps the zoo model
    return param_groups(zoo_model, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay,
                        head_lr_mult=head_lr_mult)
