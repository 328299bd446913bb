"""Speed, FLOPs and memory of zoo models against their backbone alone, in one run.

For each model this measures, round-robin so that machine noise hits every variant alike:

- ``backbone``: the timm ViT alone (``forward_intermediates`` at the model's feature layers),
- ``same_stride``: four same-stride maps into the same head (``neck="none"``, a compatibility layout),
- ``model``: the zoo model as registered (default: simple feature pyramid + head),

each in every ``--compile-modes`` entry (``eager``; ``regional``: each encoder block, then
neck and head, compiled in place, as :func:`segzoo.compile_model` does; ``whole``: one
graph per variant at a fixed size), and prints parameters, forward GFLOPs per image,
the first training step's time (compilation included), train img/s (forward, backward,
AdamW step), inference img/s, peak memory (CUDA only) and MFU against ``--peak-tflops``,
as JSON lines plus a table with ratios to the backbone in the same mode. Needs
torch/timm/transformers only (no nnunetv2, no omegaconf), so it runs on a bare GPU machine.

    python benchmarks/bench_models.py                                   # CPU defaults
    python benchmarks/bench_models.py --models segformer_dinov3_large --batch 8 \
        --device cuda --amp bf16 --compile-modes eager regional --peak-tflops 989   # H100
    python benchmarks/bench_models.py --models dpt_dinov3_large --flops-only        # params, GFLOPs: no timing
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from benchmarks.results_file import append_results  # noqa: E402
import segzoo  # noqa: E402
from segzoo.compilation import repeated_blocks  # noqa: E402
from segzoo.necks import SimpleFeaturePyramid  # noqa: E402


@dataclass
class Result:
    model: str
    variant: str
    compile_mode: str
    device: str
    img_size: int
    batch: int
    params_m: float
    gflops_fwd_per_img: float
    train_img_s: float
    infer_img_s: float | None  # None with --measure train
    train_step_s: float
    first_step_s: float  # the first training step: compilation included
    graphs_first_step: int  # graphs dynamo compiled in the first step (0 eager; regional: block, neck, head)
    peak_mem_gib: float | None
    mfu_train: float | None


class BackboneAlone(nn.Module):
    """The zoo model's backbone with nothing after it; the loss is the mean of its maps."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(x)


def build_variants(name: str, args: argparse.Namespace, compiled: bool) -> dict[str, nn.Module]:
    kwargs = dict(num_classes=args.num_classes, **args.kwargs_for.get(name, args.model_kwargs))
    if compiled and not name.startswith("segformer_mit_"):
        # a fixed size: position embeddings resampled once, no recompiles for new sizes
        kwargs["img_size"] = args.img_size
    model = segzoo.create_model(name, **kwargs)
    variants = {"backbone": BackboneAlone(model.backbone), "model": model}
    if isinstance(model.neck, SimpleFeaturePyramid) and name.startswith("segformer_"):
        # the compatibility layout: the same head on four same-stride maps
        variants["same_stride"] = segzoo.create_model(name, neck="none", **kwargs)
    return {k: variants[k] for k in args.variants if k in variants}


def compile_variant(module: nn.Module, mode: str, backend: str) -> None:
    """Compile in place as the zoo does; the backbone alone gets the same treatment."""
    if mode == "eager":
        return
    if isinstance(module, BackboneAlone):
        if mode == "whole":
            module.compile(backend=backend)
        else:  # shares its blocks with the zoo model, which compiled them already
            for block in repeated_blocks(module.backbone):
                if not segzoo.is_compiled(block):
                    block.compile(backend=backend)
        return
    segzoo.compile_model(module, mode, backend=backend)


def loss_of(module: nn.Module, output, target: torch.Tensor) -> torch.Tensor:
    if isinstance(output, (list, tuple)):  # backbone alone
        return sum(o.float().mean() for o in output)
    if isinstance(output, dict):  # set-prediction models (Mask2Former, EoMT) train with their own loss
        return module.compute_loss(output, target)
    return F.cross_entropy(output.float(), target)


def forward_flops(module: nn.Module, x: torch.Tensor) -> float:
    module.eval()  # one image: train-mode batch norm (UperNet's pooling) needs two
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x[:1])
    return float(counter.get_total_flops())


def count_only(args: argparse.Namespace) -> list[dict]:
    """Parameters and forward GFLOPs per image of the backbone alone and the zoo model, untimed
    (one forward of one image each: what a large model on a CPU can afford)."""
    rows = []
    for name in args.models:
        model = segzoo.create_model(name, num_classes=args.num_classes, **args.model_kwargs)
        x = torch.randn(1, 3, args.img_size, args.img_size)
        for variant, module in (("backbone", BackboneAlone(model.backbone)), ("model", model)):
            rows.append(dict(model=name, variant=variant, img_size=args.img_size,
                             params_m=sum(p.numel() for p in module.parameters()) / 1e6,
                             gflops_fwd_per_img=forward_flops(module, x) / 1e9))
            print(json.dumps(rows[-1]), flush=True)
        print(f"{name} @ {args.img_size}: params {rows[-1]['params_m'] / rows[-2]['params_m']:.2f}x, "
              f"forward FLOPs {rows[-1]['gflops_fwd_per_img'] / rows[-2]['gflops_fwd_per_img']:.2f}x the backbone's")
    return rows


def run(args: argparse.Namespace) -> list[Result]:
    device = torch.device(args.device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[args.amp]
    results = []
    for name in args.models:
        x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
        target = torch.randint(0, args.num_classes, (args.batch, args.img_size, args.img_size), device=device)
        entries: dict[tuple[str, str], nn.Module] = {}
        for mode in args.compile_modes:
            for variant, module in build_variants(name, args, compiled=mode != "eager").items():
                entries[variant, mode] = module
        steps: dict[tuple[str, str], Callable[[], None]] = {}
        infers: dict[tuple[str, str], Callable[[], None]] = {}
        flops: dict[tuple[str, str], float] = {}
        # the backbone alone shares the zoo model's backbone: compile the zoo models first
        for key in sorted(entries, key=lambda k: k[0] == "backbone"):
            module = entries[key]
            module.to(device)
            flops[key] = forward_flops(module, x)  # eager: FlopCounterMode counts what the graph computes
            compile_variant(module, key[1], args.backend)
            optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
            steps[key] = _train_step(module, optimizer, x, target, amp_dtype)
            infers[key] = _infer(module, x, amp_dtype)
        first_steps, graphs = {}, {}
        for key, step in steps.items():  # compiles the training graphs
            before = _graphs_compiled()
            first_steps[key] = _timed(step, device)
            graphs[key] = _graphs_compiled() - before
        train_times = _round_robin(steps, args.warmup, args.steps, device, "train")
        peaks = _peak_memory(steps, device)
        infer_times = _round_robin(infers, args.warmup, args.steps, device, "infer") if "infer" in args.measure else {}
        for key, module in entries.items():
            step_s = min(train_times[key])  # best of N: least disturbed by other work on the machine
            train_ips = args.batch / step_s
            mfu = 3 * flops[key] * train_ips / (args.peak_tflops * 1e12) if args.peak_tflops else None
            results.append(
                Result(
                    model=name, variant=key[0], compile_mode=key[1], device=_device_name(device),
                    img_size=args.img_size, batch=args.batch,
                    params_m=sum(p.numel() for p in module.parameters()) / 1e6,
                    gflops_fwd_per_img=flops[key] / 1e9, train_img_s=train_ips,
                    infer_img_s=args.batch / min(infer_times[key]) if infer_times else None, train_step_s=step_s,
                    first_step_s=first_steps[key], graphs_first_step=graphs[key], peak_mem_gib=peaks.get(key), mfu_train=mfu,
                )
            )
            print(json.dumps(asdict(results[-1])), flush=True)
        del entries, steps, infers
    return results


def _train_step(module, optimizer, x, target, amp_dtype) -> Callable[[], None]:
    def step() -> None:
        module.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = loss_of(module, module(x), target)
        loss.backward()
        optimizer.step()

    return step


def _infer(module, x, amp_dtype) -> Callable[[], None]:
    def infer() -> None:
        module.eval()
        with torch.no_grad(), torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            module(x)

    return infer


def _timed(fn: Callable[[], None], device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _round_robin(fns: dict, warmup: int, steps: int, device, what: str) -> dict:
    times: dict = {k: [] for k in fns}
    for i in range(warmup + steps):
        for key, fn in fns.items():
            elapsed = _timed(fn, device)
            if i >= warmup:
                times[key].append(elapsed)
        print(f"  {what} timing {i + 1}/{warmup + steps}", file=sys.stderr, flush=True)
    return times


def _peak_memory(steps: dict[str, Callable[[], None]], device) -> dict[str, float]:
    if device.type != "cuda":
        return {}  # no allocator peak on CPU; see benchmarks/bench_finetune.py for CPU memory
    peaks = {}
    for key, fn in steps.items():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        peaks[key] = torch.cuda.max_memory_allocated(device) / 2**30
    return peaks


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu x{torch.get_num_threads()} threads"


def print_table(results: list[Result]) -> None:
    base = {(r.model, r.compile_mode): r for r in results if r.variant == "backbone"}
    header = f"{'model':<28}{'variant':<10}{'compile':<10}{'params M':>9}{'GFLOP/img':>10}{'1st step s':>11}" \
             f"{'train img/s':>12}{'x bb':>6}{'infer img/s':>12}{'x bb':>6}{'peak GiB':>9}{'MFU':>6}"
    print(header)
    print("-" * len(header))
    for r in results:
        b = base.get((r.model, r.compile_mode))
        ratio_train = f"{r.train_img_s / b.train_img_s:.2f}" if b else "n/a"
        ratio_infer = f"{r.infer_img_s / b.infer_img_s:.2f}" if b and r.infer_img_s and b.infer_img_s else "n/a"
        infer = f"{r.infer_img_s:.3f}" if r.infer_img_s is not None else "n/a"
        peak = f"{r.peak_mem_gib:.2f}" if r.peak_mem_gib is not None else "n/a"
        mfu = f"{100 * r.mfu_train:.0f}%" if r.mfu_train is not None else "n/a"
        print(f"{r.model:<28}{r.variant:<10}{r.compile_mode:<10}{r.params_m:>9.1f}{r.gflops_fwd_per_img:>10.1f}"
              f"{r.first_step_s:>11.1f}{r.train_img_s:>12.3f}{ratio_train:>6}{infer:>12}{ratio_infer:>6}"
              f"{peak:>9}{mfu:>6}")
    print("(x bb = speed relative to the backbone alone compiled the same way; time cost = 1 / x bb; "
          f"device: {results[0].device})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["segformer_dinov3_base"])
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (the fastest is reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["bf16", "fp16", "none"], default=None,
                        help="autocast dtype (default: bf16 on CUDA, none on CPU)")
    parser.add_argument("--compile-modes", nargs="+", default=["eager"], choices=["eager", "regional", "whole"],
                        help="time every variant in each mode, in one run (compiled modes build a fixed size)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager for a quick check)")
    parser.add_argument("--variants", nargs="+", default=["backbone", "same_stride", "model"],
                        choices=["backbone", "same_stride", "model"], help="which variants to time")
    parser.add_argument("--measure", nargs="+", default=["train", "infer"], choices=["train", "infer"],
                        help="what to time (inference in a compiled mode compiles its own graphs first)")
    parser.add_argument("--model-kwargs", type=json.loads, default={},
                        help='extra create_model kwargs as JSON, e.g. \'{"backbone_kwargs": {"depth": 2}}\'')
    parser.add_argument("--kwargs-for", nargs=2, action="append", default=[], metavar=("MODEL", "JSON"),
                        help="create_model kwargs of one model instead of --model-kwargs (repeatable), e.g. "
                             "--kwargs-for eomt_dinov3_small '{\"num_blocks\": 1}'")
    parser.add_argument("--peak-tflops", type=float, default=None, help="accelerator peak for MFU (H100 bf16: 989)")
    parser.add_argument("--json", type=Path, default=None, help="also append the JSON lines to this file")
    parser.add_argument("--flops-only", action="store_true",
                        help="only parameters and forward FLOPs of backbone and model (no training, no timing)")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        # the first step compiles, allocates and warms caches: timing it would make every ratio noise
        parser.error(f"--warmup and --steps must be >= 1 (got --warmup {args.warmup}, --steps {args.steps})")
    args.kwargs_for = {name: json.loads(kwargs) for name, kwargs in args.kwargs_for}
    if args.amp is None:
        args.amp = "bf16" if args.device.startswith("cuda") else "none"
    return args


def main(argv: list[str] | None = None) -> list[Result] | list[dict]:
    args = parse_args(argv)
    if args.flops_only:
        rows = count_only(args)
        append_results(args.json, *rows)
        return rows
    results = run(args)
    print_table(results)
    append_results(args.json, *(asdict(r) for r in results))
    return results


if __name__ == "__main__":
    main()
