"""A zoo trainer that writes, per rank, what the DDP tests check (found through ``nnUNet_extTrainer``).

Each process of a run writes ``rank<N>.pt`` into ``SEGZOO_TEST_RANK_REPORTS`` after the final
validation: its network's weights and buffers, the epoch ``--c`` resumed from, the checkpoint
files it wrote, and the network's wrapper and BatchNorm types. It changes nothing in training.
"""

from __future__ import annotations

import os
from typing import Union

import torch
import torch.distributed as dist
from torch._dynamo.backends.registry import register_backend

import segzoo
from nnunet_bridge.training import checkpoints
from nnunet_bridge.trainer import nnUNetTrainerSegZoo

REPORTS_ENV = "SEGZOO_TEST_RANK_REPORTS"
RANK1_FAILS_BACKEND = "segzoo_test_fails_on_rank_1"

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


if RANK1_FAILS_BACKEND not in torch._dynamo.list_backends(exclude_tags=()):
    register_backend(_fails_on_rank_1, name=RANK1_FAILS_BACKEND)


class nnUNetTrainerSegZooRankReport(nnUNetTrainerSegZoo):
    """:class:`nnUNetTrainerSegZoo` that reports each rank's state after the final validation."""

    resumed_from_epoch = None

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
            "compiled": segzoo.is_compiled(bare.model),
            "batch_size": self.batch_size,
            "world_size": dist.get_world_size() if self.is_ddp else 1,
        }
        torch.save(report, os.path.join(os.environ[REPORTS_ENV], f"rank{self.local_rank}.pt"))
