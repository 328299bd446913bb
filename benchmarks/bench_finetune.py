"""Fine-tuning cost: peak memory with and without gradient checkpointing, and LoRA
vs full fine-tuning step time.

One training step = forward, cross-entropy, backward, AdamW step (param_groups), on
random weights and random data. Each configuration runs a warm-up step (so AdamW's
state exists) and one step measured for memory; then ``--steps`` rounds time one step
of every configuration in turn (median reported), so other load on a shared machine
falls on all configurations alike.

Peak memory is the peak of tensor memory allocated during one step above what was
allocated before it (weights and optimizer state are excluded; activations, gradients
and temporaries are in):
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``;
- CPU: the running sum of the PyTorch CPU allocator's allocation/free records from
  ``torch.profiler`` (``profile_memory=True``), in time order. Process RSS is not used:
  glibc keeps freed pages and other processes share the machine.

Usage::

    python benchmarks/bench_finetune.py                       # CPU, 512x512, batch 1
    python benchmarks/bench_finetune.py --device cuda --batch-size 8 --amp
    python benchmarks/bench_finetune.py --params-only         # trainable-parameter table of ViT-L
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import segzoo  # noqa: E402
from segzoo.optim import param_groups  # noqa: E402

CONFIGS = [
    ("full fine-tuning", dict(), False),
    ("full fine-tuning + grad checkpointing", dict(), True),
    ("LoRA r=8 qkv", dict(lora=dict(r=8, alpha=16, dropout=0.05, target_modules=["qkv"])), False),
    ("LoRA r=8 qkv + grad checkpointing", dict(lora=dict(r=8, alpha=16, dropout=0.05, target_modules=["qkv"])), True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="segformer_dinov3_base")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration (median reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--params-only", action="store_true", help="only print segformer_dinov3_large's LoRA table")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {args.device}")
    if args.params_only:
        print_lora_parameter_table()
        return
    print(f"{args.model}, {args.size}x{args.size}, batch {args.batch_size}, {args.num_classes} classes, "
          f"{'bf16 autocast' if args.amp else 'fp32'}")
    steps = {label: make_step(args, kwargs, checkpointing) for label, kwargs, checkpointing in CONFIGS}
    peaks = {label: peak_step_memory(step, torch.device(args.device)) for label, step in steps.items()}
    # timed rounds interleave the configurations, so load from other processes hits all alike
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(args.steps):
        for label, step in steps.items():
            times[label].append(timed(step, torch.device(args.device)))
    print(f"{'configuration':<40}{'step s (median)':>17}{'all steps s':>22}{'peak MiB':>10}{'trainable':>13}")
    for label, step in steps.items():
        all_steps = " ".join(f"{t:.1f}" for t in times[label])
        print(f"{label:<40}{statistics.median(times[label]):>17.2f}{all_steps:>22}"
              f"{peaks[label] / 2**20:>10.0f}{step.trainable:>13,}")


def make_step(args: argparse.Namespace, kwargs: dict, checkpointing: bool) -> Callable[[], None]:
    """A training-step closure over its own model, optimizer and data (warm-up step done)."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = segzoo.create_model(args.model, num_classes=args.num_classes, grad_checkpointing=checkpointing, **kwargs)
    model.to(device).train()
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-4))
    x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    target = torch.randint(0, args.num_classes, (args.batch_size, args.size, args.size), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: creates AdamW state
    step.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # type: ignore[attr-defined]
    return step


def timed(step: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - start


def peak_step_memory(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated during ``step()`` above the allocation at its start."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - baseline
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    records = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and str(event.device_type()).endswith("CPU")
    )
    current = peak = 0
    for _, nbytes in records:
        current += nbytes
        peak = max(peak, current)
    return peak


def print_lora_parameter_table() -> None:
    """segformer_dinov3_large at full size on CPU (random weights), LoRA r=8 on qkv."""
    model = segzoo.create_model(
        "segformer_dinov3_large", num_classes=4, lora=dict(r=8, alpha=16, dropout=0.05, target_modules=["qkv"])
    )
    print("segformer_dinov3_large, num_classes=4, decoder_hidden_size=256, pyramid neck, LoRA r=8 on qkv:")
    model.print_trainable_parameters(detailed=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
