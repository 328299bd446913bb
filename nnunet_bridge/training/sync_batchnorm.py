"""SyncBatchNorm for the CPU, so BatchNorm (UperNet's, SegFormer's head) syncs under gloo too."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["CpuSyncBatchNorm", "let_sync_batchnorm_run_on_cpu", "sync_batchnorm_on_this_rank_only"]


class CpuSyncBatchNorm(_BatchNorm):
    """:class:`torch.nn.SyncBatchNorm` for CPU modules: BatchNorm over the global batch.

    torch's SyncBatchNorm kernels are GPU-only (its forward and DDP both refuse it on the
    CPU). Here each rank's per-channel count, sum and sum of squares are summed over the
    process group with a differentiable ``all_reduce``, so the statistics (and their
    gradients) are those of the whole global batch, as SyncBatchNorm's on the GPU. In eval
    mode, or outside a process group, it is plain BatchNorm.
    """

    process_group = None  # set by SyncBatchNorm.convert_sync_batchnorm, kept by the conversion here

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        count = input.new_full((1,), input.numel() // channels)
        local = torch.cat([input.sum(dims), (input * input).sum(dims), count])
        total = _SummedOverRanks.apply(local, self.process_group or dist.group.WORLD)
        n = total[-1]
        mean = total[:channels] / n
        var = total[channels:2 * channels] / n - mean * mean  # biased: what the batch is normalised with
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            with torch.no_grad():
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * n / (n - 1).clamp(min=1), momentum)
        shape = [1, channels] + [1] * (input.dim() - 2)
        out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


class _SummedOverRanks(torch.autograd.Function):
    """``all_reduce(SUM)`` with a gradient: each rank's input feeds every rank's output, so
    the gradient of an input is the sum of all ranks' output gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def let_sync_batchnorm_run_on_cpu(module: nn.Module) -> int:
    """Turn every :class:`torch.nn.SyncBatchNorm` in ``module`` into a :class:`CpuSyncBatchNorm`
    (same parameters, buffers and process group, in place); returns how many there were."""
    converted = 0
    for child in module.modules():
        if type(child) is nn.SyncBatchNorm:
            child.__class__ = CpuSyncBatchNorm
            converted += 1
    return converted


_own_rank_groups: dict[int, Any] = {}  # id(WORLD) -> this rank's one-process group


@contextlib.contextmanager
def sync_batchnorm_on_this_rank_only(module: nn.Module) -> Iterator[None]:
    """Within this block, every SyncBatchNorm in ``module`` (torch's or :class:`CpuSyncBatchNorm`)
    syncs over a group of this process alone: plain BatchNorm of the local batch, no collective.

    So a rank can run a forward that may fail halfway (a compile trial) without the others
    waiting in a BatchNorm all-reduce it never reaches. Every rank must enter the block (the
    one-process groups are made collectively, once per process group)."""
    layers = [m for m in module.modules() if isinstance(m, (nn.SyncBatchNorm, CpuSyncBatchNorm))]
    if not layers or not dist.is_initialized():
        yield
        return
    world = dist.group.WORLD
    if id(world) not in _own_rank_groups:
        _own_rank_groups[id(world)] = dist.new_subgroups(group_size=1)[0]
    own = _own_rank_groups[id(world)]
    previous = [m.process_group for m in layers]
    for m in layers:
        m.process_group = own
    try:
        yield
    finally:
        for m, group in zip(layers, previous):
            m.process_group = group
