"""Whether regional compilation runs compiled graphs, per part and mode, and what it gains.

Compiles a model regionally through counting backends (:func:`segzoo.compile_check.compile_counting`:
a part's count grows only when dynamo runs one of its compiled graphs, never when it falls
back to eager), then runs each mode twice: a training step, a ``torch.no_grad()`` eval and
a ``torch.inference_mode()`` eval, then a training step again. It prints, per mode and part
(blocks, neck, head), the graphs compiled and the compiled-graph runs, dynamo's frames and
graph breaks (recompile reasons go to stderr), then the training step time of one repeated
block alone, eager vs compiled, on the same input.

Exits with status 1 and a loud message naming the part and mode when a part ran eager
(fewer compiled-graph runs than module calls), a graph broke, a part recompiled in a step
that should reuse its graphs, or one step compiled more graphs than expected (one for all
blocks of the same shape, one for the neck, one for the head; ``--allow-graph-breaks`` for a
model known to break). ``--force-eager head`` shows that it does: it runs the head eager
behind its compiled wrapper, and the check fails.

    python benchmarks/check_regional_compile.py                                  # CPU, tiny
    python benchmarks/check_regional_compile.py --model segformer_dinov3_large --img-size 512 \
        --batch 8 --device cuda --amp bf16 --model-kwargs '{}'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from benchmarks.results_file import append_results  # noqa: E402
import segzoo  # noqa: E402
from segzoo.compilation import regional_parts, repeated_blocks  # noqa: E402
from segzoo.compile_check import CompiledRuns, compile_counting, dynamo_counts  # noqa: E402

# each mode runs twice, a repeated one once: the first run may compile, later ones must not
MODES = ("train", "no_grad", "inference_mode", "train")


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
    parser.add_argument("--force-eager", choices=["blocks", "neck", "head"],
                        help="self-test: run this part eager (torch._dynamo.disable); the check must then fail")
    parser.add_argument("--allow-graph-breaks", action="store_true",
                        help="report graph breaks (and the extra graphs they make) without failing: for a model "
                             "known to break, such as Mask2Former's training graph in transformers' pixel decoder")
    parser.add_argument("--json", type=Path, default=None, help="also append the report, one JSON line, to this file")
    args = parser.parse_args(argv)
    torch._logging.set_logs(recompiles=True, graph_breaks=True)  # the reasons, on stderr

    device = torch.device(args.device)
    size = {} if args.model.startswith("segformer_mit_") else {"img_size": args.img_size}  # MiT: any size by design
    model = segzoo.create_model(args.model, num_classes=3, **size, **args.model_kwargs).to(device)
    runs = compile_counting(model, backend=args.backend)
    if args.force_eager:
        for module in regional_parts(model)[args.force_eager]:
            module.forward = torch._dynamo.disable(module.forward)  # still called through its compiled wrapper
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    blocks = repeated_blocks(model.backbone)
    # blocks of one type and parameter shapes share one graph; a MiT has a shape per stage
    expected_graphs = {part: 1 for part in runs.parts}
    expected_graphs["blocks"] = len({(type(b), tuple(p.shape for p in b.parameters())) for b in blocks})
    report: dict = {"bench": "check_regional_compile", "torch": torch.__version__, "device": args.device,
                    "model": args.model, "backend": args.backend, "amp": args.amp,
                    "modules": {part: c.modules for part, c in runs.parts.items()}, "modes": {}}
    problems: list[str] = []
    for index, mode in enumerate(MODES):
        label = mode if mode not in MODES[:index] else f"{mode}_again"
        before = dynamo_counts()
        result: dict = {"graphs": {part: [] for part in runs.parts}, "runs": {part: [] for part in runs.parts}}
        for step in range(2 if label == mode else 1):
            runs.reset()
            _step(model, x, mode, device, args.amp)
            problems += [f"{part} ran eager in {label} (step {step + 1}): {why}"
                         for part, why in runs.ran_eager().items()]
            for part, counts in runs.parts.items():
                result["graphs"][part].append(counts.graphs)
                result["runs"][part].append(counts.runs)
                limit = expected_graphs[part] if step == 0 and label == mode else 0  # only a first step compiles
                if counts.graphs > limit and not (args.allow_graph_breaks and limit):
                    problems.append(f"{part} compiled {counts.graphs} graphs in {label} (step {step + 1}), "
                                    f"expected at most {limit}: a recompile or a graph break")
        result["dynamo"] = {key: value - before[key] for key, value in dynamo_counts().items()}
        if result["dynamo"]["graph_breaks"] and not args.allow_graph_breaks:
            problems.append(f"{result['dynamo']['graph_breaks']} graph break(s) in {label}")
        report["modes"][label] = result
    if blocks:
        report["block_step_s"] = _block_eager_vs_compiled(model, blocks[0], runs, x, device, args)
        if report["block_step_s"]["compiled_graph_runs"] == 0:
            problems.append("blocks ran eager in the timed block steps: no compiled-graph run")
    report["problems"] = problems
    _print_table(report)
    print(json.dumps(report, indent=1), flush=True)
    append_results(args.json, report)
    if problems:
        bar = "!" * 78
        print(f"\n{bar}\nREGIONAL COMPILE CHECK FAILED ({args.model}, {args.backend}, {args.device}):\n"
              + "\n".join(f"  - {p}" for p in problems) + f"\n{bar}", file=sys.stderr, flush=True)
        sys.exit(1)
    return report


def _autocast(device: torch.device, amp: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")


def _step(model: torch.nn.Module, x: torch.Tensor, mode: str, device: torch.device, amp: str) -> None:
    """One training step (forward and backward) or one eval forward, in ``mode``."""
    model.train(mode == "train")
    grad = {"train": contextlib.nullcontext(), "no_grad": torch.no_grad(), "inference_mode": torch.inference_mode()}
    with grad[mode], _autocast(device, amp):
        out = model(x)
        if mode != "train":
            return
        if isinstance(out, dict):  # set outputs (Mask2Former, EoMT): their own loss
            target = torch.randint(0, 3, (x.shape[0], *x.shape[-2:]), device=device)
            loss = model.compute_loss(out, target)
        else:
            loss = out.float().mean()
    loss.backward()
    model.zero_grad(set_to_none=True)


def _print_table(report: dict) -> None:
    """Per mode and part: graphs compiled / compiled-graph runs in each step (stderr, for the log)."""
    print(f"{'mode':<16}{'part':<8}{'modules':>8}   graphs/runs in each step", file=sys.stderr)
    for label, result in report["modes"].items():
        for part, modules in report["modules"].items():
            per_step = "   ".join(f"{g}/{r}" for g, r in zip(result["graphs"][part], result["runs"][part]))
            print(f"{label:<16}{part:<8}{modules:>8}   {per_step}", file=sys.stderr)
    print(file=sys.stderr, flush=True)


def _block_eager_vs_compiled(model, block, runs: CompiledRuns, x, device, args) -> dict:
    """Train-step time of the first block alone on the tokens it sees, eager and compiled."""
    captured = {}

    def grab(_module, inputs, kwargs):
        captured.setdefault("args", tuple(t.detach() if torch.is_tensor(t) else t for t in inputs))
        captured.setdefault("kwargs", {k: v.detach() if torch.is_tensor(v) else v for k, v in kwargs.items()})

    # the block runs eager while its hook grabs the inputs: a hook on a compiled module would recompile it
    compiled_impl, block._compiled_call_impl = block._compiled_call_impl, None
    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    model.eval()  # the other parts reuse their no_grad eval graphs
    with torch.no_grad(), _autocast(device, args.amp):
        model(x)
    handle.remove()
    model.train()
    times = {}
    runs.reset()
    for mode, impl in (("eager", None), ("compiled", compiled_impl)):
        block._compiled_call_impl = impl
        best = float("inf")
        for _ in range(args.steps + 1):  # the first run compiles
            inputs = tuple(t.clone().requires_grad_(t.is_floating_point()) if torch.is_tensor(t) else t
                           for t in captured["args"])
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
    times["compiled_graph_runs"] = runs.parts["blocks"].runs  # the compiled timing measured compiled graphs
    return times


if __name__ == "__main__":
    main()
