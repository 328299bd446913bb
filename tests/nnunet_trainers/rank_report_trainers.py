"""A zoo trainer that writes, per rank, what the DDP tests check (found through ``nnUNet_extTrainer``).

Each process of a run writes ``rank<N>.pt`` into ``SEGZOO_TEST_RANK_REPORTS`` after the final
validation: its network's weights and buffers, the epoch ``--c`` resumed from, the checkpoint
files it wrote, the network's wrapper and BatchNorm types, and what was compiled: whether the
model still is, the graphs dynamo compiled, and, with a counting backend as
``train.compile_backend`` (``segzoo_test_aot_eager_counted``, ``segzoo_test_eager_counted``),
how often compiled graphs ran in each training step. It changes nothing in training.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Callable, Union

import torch
import torch.distributed as dist
from torch._dynamo.backends.registry import lookup_backend, register_backend
from torch._dynamo.utils import counters

import segzoo
from nnunet_bridge.training import checkpoints
from nnunet_bridge.trainer import nnUNetTrainerSegZoo

REPORTS_ENV = "SEGZOO_TEST_RANK_REPORTS"
RANK1_FAILS_BACKEND = "segzoo_test_fails_on_rank_1"
# torch.compile backends that run as the named one and count their graphs' runs
COUNTED_BACKENDS = {"segzoo_test_aot_eager_counted": "aot_eager", "segzoo_test_eager_counted": "eager"}

_written: list[str] = []
_write_atomic = checkpoints.write_atomic


def _recording_write_atomic(path, data):
    """Observes the bridge's checkpoint writes in this process (and writes them as before)."""
    _written.append(os.path.basename(path))
    return _write_atomic(path, data)


checkpoints.write_atomic = _recording_write_atomic


def _fails_on_rank_1(gm: torch.fx.GraphModule, example_inputs):
    """A torch.compile backend that compiles (to the traced graph) on every rank but rank 1."""
    if dist.is_initialized() and dist.get_rank() == 1:
        raise RuntimeError("backend failure on rank 1 for the test")
    return gm.forward


_compiled_graph_runs = Counter()  # of this process, by graphs compiled with a COUNTED_BACKENDS backend


def _counted(inner: str) -> Callable[..., Any]:
    """The backend ``inner`` (``aot_eager``: forward and backward through AOT autograd, as inductor
    compiles them; ``eager``: dynamo's graphs only), its compiled graphs counting their runs:
    evidence that training ran the compiled code, not only compiled it."""

    def backend(gm: torch.fx.GraphModule, example_inputs) -> Callable[..., Any]:
        compiled = lookup_backend(inner)(gm, example_inputs)

        def counted(*args: Any) -> Any:
            _compiled_graph_runs["runs"] += 1
            return compiled(*args)

        return counted

    return backend


_BACKENDS = {RANK1_FAILS_BACKEND: _fails_on_rank_1}
_BACKENDS.update((name, _counted(inner)) for name, inner in COUNTED_BACKENDS.items())
for _name, _backend in _BACKENDS.items():
    if _name not in torch._dynamo.list_backends(exclude_tags=()):
        _backend.graph_runs = _compiled_graph_runs
        register_backend(_backend, name=_name)
# nnU-Net's trainer search executes this file afresh on every lookup (the bridge looks the trainer up
# before a run and nnU-Net again inside it), but the backends are registered once per process: count
# with the counter of the copy that registered them
_compiled_graph_runs = lookup_backend(next(iter(COUNTED_BACKENDS))).graph_runs


class nnUNetTrainerSegZooRankReport(nnUNetTrainerSegZoo):
    """:class:`nnUNetTrainerSegZoo` that reports each rank's state after the final validation."""

    resumed_from_epoch = None
    compiled_graph_runs_per_train_step: list[int] = []  # set per run in on_train_start

    # no __init__ here: nnU-Net records the outermost __init__'s named arguments for checkpoints
    def on_train_start(self) -> None:
        self.compiled_graph_runs_per_train_step = []
        super().on_train_start()

    def train_step(self, batch: dict) -> dict:
        before = _compiled_graph_runs["runs"]
        result = super().train_step(batch)
        self.compiled_graph_runs_per_train_step.append(_compiled_graph_runs["runs"] - before)
        return result

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        self.resumed_from_epoch = self.current_epoch

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        super().perform_actual_validation(save_probabilities)
        bare = self.bare_network()
        report = {
            "weights": {k: v.detach().cpu().clone() for k, v in bare.state_dict().items()},
            "resumed_from_epoch": self.resumed_from_epoch,
            "current_epoch": self.current_epoch,
            "written": list(_written),
            "network_type": type(self.network).__name__,
            "norm_types": sorted({type(m).__name__ for m in bare.modules() if "Norm" in type(m).__name__}),
            "compiled": segzoo.is_compiled(bare.model),  # still compiled: no fall-back to eager
            "dynamo_graphs": counters["stats"]["unique_graphs"],  # compiled in this process
            "compiled_graph_runs_per_train_step": list(self.compiled_graph_runs_per_train_step),
            "batch_size": self.batch_size,
            "world_size": dist.get_world_size() if self.is_ddp else 1,
        }
        torch.save(report, os.path.join(os.environ[REPORTS_ENV], f"rank{self.local_rank}.pt"))
