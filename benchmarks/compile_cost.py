"""What ``segzoo.compile_model`` costs: the first call and every new input size, eager vs compiled.

Each configuration runs in a process of its own with an empty inductor cache, so every
figure is what a fresh run pays: eager, then regional compilation with ``dynamic=None``
(torch's default), ``dynamic=False`` and ``dynamic=True``, optionally ``mode="whole"`` on a
fixed-size model. Every configuration calls the same model on a list of input sizes (a size
seen before comes again at the end) and reports, per call, the wall time and the graphs
dynamo compiled in it; then the steady time of one more call at the last size.
``--warm-cache`` adds a second process for ``dynamic=None`` that reuses the first one's
inductor cache on disk (what a second run of the same script pays).

Besides wall time, each call reports the CPU time it used (this process and the compiler
processes it waited for): on a machine shared with other work, wall time grows with the load
and CPU time hardly does. Inductor compiles in this process (``--compile-threads 1``, the
default here) so that its CPU time is counted; a pool of compile workers would hide it.

    python benchmarks/compile_cost.py                                    # CPU, a 2-block ViT-S SegFormer
    python benchmarks/compile_cost.py --device cuda --img-sizes 512 768 1024 512 --model-kwargs '{}'
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
from benchmarks.results_file import append_results  # noqa: E402

CONFIGS = {  # name: (compile mode or None for eager, dynamic)
    "eager": (None, None),
    "regional dynamic=None": ("regional", None),
    "regional dynamic=False": ("regional", False),
    "regional dynamic=True": ("regional", True),
    "whole, fixed img_size": ("whole", None),
}
DEFAULT_CONFIGS = list(CONFIGS)[:4]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="segformer_dinov3_small")
    parser.add_argument("--model-kwargs", type=json.loads, default={"backbone_kwargs": {"depth": 2}},
                        help="create_model kwargs as JSON (default: ViT-S width, 2 blocks)")
    parser.add_argument("--img-sizes", type=int, nargs="+", default=[64, 96, 128, 64])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train", action="store_true", help="time training steps (forward and backward), not eval")
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    parser.add_argument("--warm-cache", action="store_true",
                        help="rerun 'regional dynamic=None' in a new process on the first one's inductor cache")
    parser.add_argument("--compile-threads", type=int, default=1,
                        help="TORCHINDUCTOR_COMPILE_THREADS of each run (1: compile in-process, CPU time counted)")
    parser.add_argument("--json", type=Path, default=None, help="also append the results, one JSON line each")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one configuration, in this process
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = _measure(args, args.worker)
        print(json.dumps(result), flush=True)
        return [result]

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(name, Path(tmp) / str(i)) for i, name in enumerate(args.configs)]
        if args.warm_cache and "regional dynamic=None" in args.configs:
            cache = runs[args.configs.index("regional dynamic=None")][1]
            runs.append(("regional dynamic=None, warm cache", cache))
        for name, cache in runs:
            results.append(_run_worker(argv if argv is not None else sys.argv[1:], name, cache, args.compile_threads))
    _print_table(results, args)
    for result in results:
        print(json.dumps(result))
    append_results(args.json, *results)
    return results


def _run_worker(argv: list[str], name: str, cache: Path, compile_threads: int) -> dict:
    """One configuration in a fresh interpreter: nothing compiled, imported or cached before it."""
    config = name.removesuffix(", warm cache")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "TORCHINDUCTOR_COMPILE_THREADS": str(compile_threads)}
    command = [sys.executable, __file__, *argv, "--worker", config]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["config"] = name
    return result


def _measure(args: argparse.Namespace, config: str) -> dict:
    start = time.perf_counter()
    import torch

    import segzoo
    from segzoo.compile_check import dynamo_counts

    import_s = time.perf_counter() - start
    mode, dynamic = CONFIGS[config]
    device = torch.device(args.device)
    kwargs = dict(args.model_kwargs)
    if mode == "whole":  # one graph wants one size: a fixed-size model, called at that size only
        kwargs["img_size"] = args.img_sizes[0]
    model = segzoo.create_model(args.model, num_classes=4, **kwargs).to(device).train(args.train)
    if mode is not None:
        segzoo.compile_model(model, mode, dynamic=dynamic)
    sizes = [args.img_sizes[0]] if mode == "whole" else args.img_sizes
    calls = []
    for size in sizes:
        x = torch.randn(args.batch, 3, size, size, device=device)
        before, cpu = dynamo_counts(), _cpu_seconds()
        seconds = _timed_call(model, x, args.train, device)
        graphs = dynamo_counts()["graphs"] - before["graphs"]
        calls.append({"img_size": size, "seconds": round(seconds, 3), "cpu_s": round(_cpu_seconds() - cpu, 2),
                      "graphs_compiled": graphs})
    steady = min(_timed_call(model, x, args.train, device) for _ in range(3))
    return {
        "bench": "compile_cost", "config": config, "model": args.model, "model_kwargs": args.model_kwargs,
        "batch": args.batch, "train": args.train, "device": _device_name(device), "torch": torch.__version__,
        "import_s": round(import_s, 2), "calls": calls, "steady_s": round(steady, 4),
        # a shared machine's other work slows every figure: the load says how much was going on
        "load_average_1min": round(os.getloadavg()[0], 1),
    }


def _cpu_seconds() -> float:
    """User and system CPU time of this process and of the children it waited for (the C++ compiler)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed_call(model, x, train: bool, device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    if train:
        model(x).float().mean().backward()
        model.zero_grad(set_to_none=True)
    else:
        with torch.no_grad():
            model(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu, {torch.get_num_threads()} threads"


def _print_table(results: list[dict], args: argparse.Namespace) -> None:
    sizes = args.img_sizes
    seen: set[int] = set()
    heads = []
    for size in sizes:
        heads.append(f"{size}px{' again' if size in seen else ''}")
        seen.add(size)
    print(f"{'configuration':<36}" + "".join(f"{h:>20}" for h in heads) + f"{'steady':>10}{'load':>6}")
    for result in results:
        cells = [f"{c['seconds']:.1f}s/{c['cpu_s']:.1f}s ({c['graphs_compiled']}g)" for c in result["calls"]]
        cells += ["-"] * (len(sizes) - len(cells))
        print(f"{result['config']:<36}" + "".join(f"{c:>20}" for c in cells) + f"{result['steady_s']:>9.3f}s"
              f"{result['load_average_1min']:>6}")
    print(f"(wall/CPU seconds per call, {'training step' if args.train else 'no_grad eval'}, batch {args.batch}; "
          f"(Ng) = graphs dynamo compiled during that call; steady = the fastest of 3 more calls at the last size; "
          f"load = the 1-minute load average at the end; device: {results[0]['device'] if results else args.device})")


if __name__ == "__main__":
    main()
