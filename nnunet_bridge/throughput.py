"""A trainer mix-in that logs each training epoch's throughput in images per second."""

from __future__ import annotations

import time

import torch.distributed as dist

__all__ = ["LogsTrainingThroughput"]


class LogsTrainingThroughput:
    """Put before an ``nnUNetTrainer`` in the bases: after nnU-Net's own epoch bookkeeping,
    logs ``training throughput: X images/s``. Each nnU-Net training step ends with the loss
    on the host, so the wall time includes the device's work: the figure to hold against
    the model's raw speed (``benchmarks/bench_models.py``) to see what data loading costs.
    In a DDP run the figure is the sum over the processes (each trains its share of the
    batch) and the line lists each rank's own."""

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if dist.is_available() and dist.is_initialized():
            # start every rank's clock together: rank 0 has just written checkpoints and the
            # progress curve, which the others would count as their own training time
            dist.barrier()
        self._train_epoch_started = time.perf_counter()

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        seconds = time.perf_counter() - self._train_epoch_started
        super().on_train_epoch_end(train_outputs)
        images = self.num_iterations_per_epoch * self.batch_size
        per_rank = _gathered(images / seconds)  # every rank gets here each epoch (DDP: the loss gather)
        ranks = f"; per rank: {', '.join(f'{r:.1f}' for r in per_rank)} images/s" if len(per_rank) > 1 else ""
        self.print_to_log_file(f"training throughput: {sum(per_rank):.1f} images/s "
                               f"({self.num_iterations_per_epoch} iterations of batch {self.batch_size} "
                               f"in {seconds:.1f} s{ranks})")


def _gathered(value: float) -> list[float]:
    """``value`` of every rank in a DDP run (rank order); ``[value]`` in a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values: list = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values
