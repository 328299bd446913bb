"""Regional ``torch.compile`` of the zoo model, with a fall-back to eager at the first step."""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import torch

from segzoo import compile_model, is_compiled, uncompile_model

from ..config import ConfigError
from .base import ZooTrainerBase

__all__ = ["COMPILE_ENV", "CompilesRegionally"]

COMPILE_ENV = "nnUNet_compile"  # nnU-Net's own switch: t/true/1 or f/false/0


class CompilesRegionally(ZooTrainerBase):
    """Instead of nnU-Net's whole-network compile: each encoder block, then neck and head, in
    place (:func:`segzoo.compile_model`), once training starts. The first training step, the
    first validation step and the final validation fall back to eager if compiling fails."""

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
        compile_model(self._bare_network().model, "regional", backend=backend)
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
        the model eager again and rerun it. An error that eager also raises is not compile's."""
        if what in self._compiled_steps_checked:
            return step(*args)
        model = self._bare_network().model
        if not is_compiled(model):  # eager run: decided once, not by walking the modules every step
            self._compiled_steps_checked.add(what)
            return step(*args)
        try:
            result = step(*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure; a real bug re-raises eagerly below
            first_line = (str(err).strip().splitlines() or [""])[0][:300]
            message = (f"torch.compile failed at the first {what} ({type(err).__name__}: {first_line}); "
                       f"training continues eager. Set {COMPILE_ENV}=f to skip compiling")
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            self.print_to_log_file(message)
            uncompile_model(model)
            self.optimizer.zero_grad(set_to_none=True)
            result = step(*args)
        self._compiled_steps_checked.add(what)
        return result
