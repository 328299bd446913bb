"""What regional compilation did to one zoo model, and what it gains on its repeated block.

Compiles a model with :func:`segzoo.compile_model` (regional), runs training steps, and
prints: how many times each compiled part was entered through its compiled call, the
graphs and frames dynamo compiled, its graph breaks and recompiles, then the training
step time of one repeated block alone, eager vs compiled, on the same input. A block
that is entered but gains nothing, or a part that is never entered, shows here first.

    python benchmarks/check_regional_compile.py                                  # CPU, tiny
    python benchmarks/check_regional_compile.py --model segformer_dinov3_large --img-size 512 \
        --batch 8 --device cuda --amp bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import segzoo  # noqa: E402
from segzoo.compilation import repeated_blocks  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="segformer_dinov3_small")
    parser.add_argument("--model-kwargs", type=json.loads,
                        default={"backbone_kwargs": {"depth": 4, "embed_dim": 64, "num_heads": 2},
                                 "decoder_hidden_size": 32})
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["bf16", "none"], default="none")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--steps", type=int, default=5, help="timed block steps (the fastest is reported)")
    args = parser.parse_args(argv)
    torch._logging.set_logs(recompiles=True, graph_breaks=True)
    from torch._dynamo.utils import counters

    device = torch.device(args.device)
    model = segzoo.create_model(args.model, num_classes=3, img_size=args.img_size, **args.model_kwargs).to(device)
    segzoo.compile_model(model, backend=args.backend)
    entered: Counter[str] = Counter()
    for name, module in model.named_modules():
        compiled = getattr(module, "_compiled_call_impl", None)
        if compiled is not None:
            module._compiled_call_impl = _counting(compiled, entered, name)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    for _ in range(2):
        with _autocast(device, args.amp):
            out = model(x)
        out.float().mean().backward()
    blocks = repeated_blocks(model.backbone)
    report = {
        "torch": torch.__version__, "device": args.device, "model": args.model,
        "blocks": len(blocks), "blocks_entered_compiled": sum(1 for n in entered if ".blocks." in n
                                                              or ".block." in n),
        "entered": dict(entered), "frames": dict(counters["frames"]), "stats": dict(counters["stats"]),
        "graph_breaks": sum(counters["graph_break"].values()), "recompiles": dict(counters["recompiles"]),
    }
    if blocks:
        report["block_step_s"] = _block_eager_vs_compiled(model, blocks[0], x, device, args)
    print(json.dumps(report, indent=1), flush=True)
    return report


def _counting(compiled, entered: Counter, name: str):
    def call(*args, **kwargs):
        entered[name] += 1
        return compiled(*args, **kwargs)
    return call


def _autocast(device: torch.device, amp: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")


def _block_eager_vs_compiled(model, block, x, device, args) -> dict:
    """Train-step time of the first block alone on the tokens it sees, eager and compiled."""
    captured = {}

    def grab(_module, inputs, kwargs):
        captured.setdefault("args", tuple(t.detach() for t in inputs))
        captured.setdefault("kwargs", {k: v.detach() if torch.is_tensor(v) else v for k, v in kwargs.items()})

    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad(), _autocast(device, args.amp):
        model(x)
    handle.remove()
    compiled_impl = block._compiled_call_impl
    times = {}
    for mode, impl in (("eager", None), ("compiled", compiled_impl)):
        block._compiled_call_impl = impl
        best = float("inf")
        for _ in range(args.steps + 1):  # the first run compiles
            inputs = tuple(t.clone().requires_grad_(t.is_floating_point()) for t in captured["args"])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            with _autocast(device, args.amp):
                out = block(*inputs, **captured["kwargs"])
            out.float().mean().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
        times[mode] = best
    block._compiled_call_impl = compiled_impl
    times["speedup"] = times["eager"] / times["compiled"]
    return times


if __name__ == "__main__":
    main()
