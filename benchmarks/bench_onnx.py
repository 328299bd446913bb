"""Inference speed of a model exported to ONNX (ONNX Runtime, CPU) against eager PyTorch, in one run.

Exports the model with :func:`segzoo.export_onnx` (checked against eager), then times both
round-robin, reporting the fastest of ``--steps`` runs of each and the ratio, with the
machine's thread count. Needs the export extra (``pip install 'segzoo[export]'``).

    python benchmarks/bench_onnx.py                                          # segformer_dinov3_small, 224, batch 1
    python benchmarks/bench_onnx.py --model segformer_mit_b0 --img-size 512 --json results.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from benchmarks.results_file import append_results  # noqa: E402
import segzoo  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="segformer_dinov3_small")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="timed runs of each (the fastest is reported)")
    parser.add_argument("--model-kwargs", type=json.loads, default={}, help="extra create_model kwargs as JSON")
    parser.add_argument("--json", type=Path, default=None, help="also append the result to this file")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    import onnxruntime

    model = segzoo.create_model(args.model, num_classes=4, **args.model_kwargs).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = segzoo.export_onnx(model, Path(tmp) / "model.onnx", img_size=args.img_size)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = torch.randn(args.batch, model.in_chans, args.img_size, args.img_size)
        runs = {"eager": lambda: model(x), "onnxruntime": lambda: session.run(None, {"image": x.numpy()})}
        times: dict[str, list[float]] = {name: [] for name in runs}
        with torch.no_grad():
            for name, run in runs.items():
                run()  # warm-up: allocation, ONNX Runtime's first-run optimisations
            for _ in range(args.steps):
                for name, run in runs.items():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
    best = {name: min(t) for name, t in times.items()}
    result = {"model": args.model, "img_size": args.img_size, "batch": args.batch,
              "threads": torch.get_num_threads(), "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
              "eager_s": round(best["eager"], 4), "onnxruntime_s": round(best["onnxruntime"], 4),
              "speedup": round(best["eager"] / best["onnxruntime"], 2)}
    print(json.dumps(result), flush=True)
    append_results(args.json, result)
    return result


if __name__ == "__main__":
    main()
