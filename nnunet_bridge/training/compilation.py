"""Regional ``torch.compile`` of the zoo model, with a fall-back to eager at the first step."""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import torch
import torch.distributed as dist
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from segzoo import compile_model, is_compiled, uncompile_model

from ..config import ConfigError
from .base import ZooTrainerBase
from .sync_batchnorm import sync_batchnorm_on_this_rank_only

__all__ = ["COMPILE_ENV", "CompilesRegionally"]

COMPILE_ENV = "nnUNet_compile"  # nnU-Net's own switch: t/true/1 or f/false/0


class CompilesRegionally(ZooTrainerBase):
    """Instead of nnU-Net's whole-network compile: each encoder block, then neck and head, in
    place (:func:`segzoo.compile_model`), once training starts (before a DDP wrap). The first
    training step, the first validation step and the final validation fall back to eager if
    compiling fails; in a DDP run, on every rank if it fails on any."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._compiled_steps_checked: set[str] = set()  # steps past their first run (compiled or eager)
        super().__init__(*args, **kwargs)

    def _do_i_compile(self) -> bool:
        """nnU-Net's whole-network ``torch.compile`` stays off: :meth:`compile_network` compiles
        the zoo model regionally instead (each encoder block, then neck and head)."""
        return False

    def wants_compile(self) -> bool:
        """As nnU-Net: on by default on CUDA, ``nnUNet_compile=f`` turns it off. Unlike nnU-Net,
        ``nnUNet_compile=t`` also compiles on the CPU (zoo models compile there)."""
        setting = os.environ.get(COMPILE_ENV)
        if setting is not None and setting.strip():
            return setting.strip().lower() in ("true", "1", "t")
        return self.device.type == "cuda"

    def compile_network(self) -> None:
        """Compile the zoo model in place, regionally; called once training starts, so
        ``--val`` and ``nnUNetv2_predict`` stay eager and nothing compiles that never trains."""
        backend = str(self.segzoo_config.train.compile_backend)
        if backend not in torch._dynamo.list_backends(exclude_tags=()):
            raise ConfigError(
                f"train.compile_backend {backend!r} is not a torch.compile backend; "
                f"choose one of {torch._dynamo.list_backends()} (or set {COMPILE_ENV}=f)"
            )
        compile_model(self.bare_network().model, "regional", backend=backend)
        self.print_to_log_file(
            f"Compiling the zoo model regionally (torch.compile, backend {backend}): each encoder block, "
            f"then neck and head. {COMPILE_ENV}=f turns this off"
        )

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.wants_compile():
            self.compile_network()

    def train_step(self, batch: dict) -> dict:
        return self._with_eager_fallback("training step", super().train_step, batch)

    def validation_step(self, batch: dict) -> dict:
        return self._with_eager_fallback("validation step", super().validation_step, batch)

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        self._with_eager_fallback("final validation", super().perform_actual_validation, save_probabilities)

    def _with_eager_fallback(self, what: str, step: Callable[..., Any], *args: Any) -> Any:
        """Run ``step``; if the first compiled run of this kind of step fails, warn once, make
        the model eager again and rerun it. An error that eager also raises is not compile's.
        In a DDP run every rank decides together (:meth:`_check_compiles_on_every_rank`)."""
        if what in self._compiled_steps_checked:
            return step(*args)
        if not is_compiled(self.bare_network().model):  # eager: decided once, not by walking modules each step
            self._compiled_steps_checked.add(what)
            return step(*args)
        if self.is_ddp:
            self._check_compiles_on_every_rank(what)
            self._compiled_steps_checked.add(what)
            return step(*args)
        try:
            result = step(*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure; a real bug re-raises eagerly below
            self._fall_back_to_eager(what, _described(err))
            result = step(*args)
        self._compiled_steps_checked.add(what)
        return result

    def _check_compiles_on_every_rank(self, what: str) -> None:
        """DDP: a rank falling back alone would rerun its step while the others wait inside a
        collective of theirs (DDP's gradient all-reduce, the Dice loss's gather). So the first
        compiled run of each kind of step is tried beforehand, on the bare network, without the
        loss or an optimizer step, and one all-reduce tells every rank whether any failed: then
        all go eager. The tried forward normalises each rank's BatchNorm locally: a rank whose
        compile fails halfway would otherwise leave the others in SyncBatchNorm's all-reduce,
        meeting the flag's (gloo aborts on the size mismatch, NCCL hangs). Regions holding
        SyncBatchNorm therefore compile once more, synced, in the real step."""
        error = None
        try:
            with sync_batchnorm_on_this_rank_only(self.bare_network()):
                self._try_compiled_forward(what)
        except Exception as err:  # noqa: BLE001 - any compiler failure; eager re-raises a real bug in the step
            error = err
        failed = torch.tensor([int(error is not None)], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if failed.item():
            self._fall_back_to_eager(what, _described(error) if error is not None else "on another rank")

    def _try_compiled_forward(self, what: str) -> None:
        """The compiled graphs ``what`` runs (forward, and backward for training), on zeros of the
        step's shape, leaving weights, BatchNorm statistics and gradients as they were."""
        network = self.bare_network()
        training = what == "training step"
        batch = 1 if what == "final validation" else self.batch_size
        x = torch.zeros((batch, self.num_input_channels, *self.configuration_manager.patch_size), device=self.device)
        buffers = {name: b.clone() for name, b in network.named_buffers()}
        was_training = network.training
        network.train(training)
        try:
            grad_mode = torch.enable_grad() if training else \
                torch.inference_mode() if what == "final validation" else torch.no_grad()
            with grad_mode, (autocast(self.device.type) if self.device.type == "cuda" else dummy_context()):
                output = network(x)
            trainable = [t.float().sum() for t in _tensors(output) if t.requires_grad]
            if training and trainable:  # any scalar of the outputs runs the compiled backward graphs
                torch.stack(trainable).sum().backward()
        finally:
            network.train(was_training)
            with torch.no_grad():
                for name, b in network.named_buffers():
                    b.copy_(buffers[name])
            self.optimizer.zero_grad(set_to_none=True)

    def _fall_back_to_eager(self, what: str, reason: str) -> None:
        message = (f"torch.compile failed at the first {what} ({reason}); training continues eager. "
                   f"Set {COMPILE_ENV}=f to skip compiling")
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        self.print_to_log_file(message)
        uncompile_model(self.bare_network().model)
        self.optimizer.zero_grad(set_to_none=True)


def _described(err: BaseException) -> str:
    first_line = (str(err).strip().splitlines() or [""])[0][:300]
    return f"{type(err).__name__}: {first_line}"


def _tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor in a model output (a tensor, or dicts / lists / tuples of them, as Mask2Former's)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    return []
