"""Segmentation quality of the default neck (simple feature pyramid) vs four same-stride maps.

Trains the same model twice from the same random initialisation and the same batches,
once with ``neck="pyramid"`` (strides 4/8/16/32) and once with ``neck="none"`` (the
compatibility layout: four stride-14 maps), on synthetic fundus images whose vessels
are 1-4 px wide, then reports the Dice of each class on held-out images. Thin structures
are where a single coarse stride loses: this is the evidence behind the default.

    python benchmarks/bench_neck_quality.py                      # ViT-S/14, 150 steps, CPU (a few minutes)
    python benchmarks/bench_neck_quality.py --steps 300 --json results.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from benchmarks.results_file import append_results  # noqa: E402
import segzoo  # noqa: E402
from nnunet_bridge.demo.synthetic import LABELS, fundus_case  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="segformer_dinov2_small")
    parser.add_argument("--size", type=int, default=112, help="image side (a multiple of the patch size)")
    parser.add_argument("--train-cases", type=int, default=32)
    parser.add_argument("--test-cases", type=int, default=8)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-kwargs", type=json.loads, default={}, help="extra create_model kwargs as JSON")
    parser.add_argument("--json", type=Path, default=None, help="also append the result to this file")
    args = parser.parse_args(argv)

    train = fundus_tensors(args.train_cases, args.size, first_seed=0)
    test = fundus_tensors(args.test_cases, args.size, first_seed=10_000)
    result = {"model": args.model, "size": args.size, "steps": args.steps, "batch": args.batch,
              "threads": torch.get_num_threads(), "dice": {}}
    for neck in ("pyramid", "none"):
        start = time.perf_counter()
        model = _train(args, neck, train)
        result["dice"][neck] = dice_per_class(model, test)
        print(f"{neck:8s} trained in {time.perf_counter() - start:.0f} s: Dice {result['dice'][neck]}", flush=True)
    print(json.dumps(result), flush=True)
    append_results(args.json, result)
    return result


def fundus_tensors(count: int, size: int, first_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` synthetic fundus images (normalised, ``(N, 3, size, size)``) and their label maps."""
    images, labels = zip(*(fundus_case(size=size, seed=first_seed + i) for i in range(count)))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.25, torch.from_numpy(np.stack(labels)).long()


def _train(args: argparse.Namespace, neck: str, data: tuple[torch.Tensor, torch.Tensor]) -> torch.nn.Module:
    torch.manual_seed(args.seed)  # the same initial backbone and head for both necks
    model = segzoo.create_model(args.model, num_classes=len(LABELS), neck=neck, **args.model_kwargs).train()
    optimizer = torch.optim.AdamW(segzoo.optim.param_groups(model, lr=args.lr, weight_decay=0.05), lr=args.lr)
    order = torch.Generator().manual_seed(args.seed)  # the same batches for both
    images, labels = data
    for step in range(args.steps):
        pick = torch.randint(0, len(images), (args.batch,), generator=order)
        loss = F.cross_entropy(model(images[pick]), labels[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 25 == 0:
            print(f"  {neck}: step {step + 1}/{args.steps}, loss {loss.item():.3f}", flush=True)
    return model.eval()


def dice_per_class(model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """Held-out Dice of each foreground class (argmax of the eval-mode output)."""
    images, labels = data
    with torch.no_grad():
        predicted = torch.cat([model(images[i:i + 4]).argmax(1) for i in range(0, len(images), 4)])
    dice = {}
    for name, label in LABELS.items():
        if label == 0:
            continue
        p, t = predicted == label, labels == label
        dice[name] = round(float(2 * (p & t).sum() / max(int(p.sum() + t.sum()), 1)), 3)
    return dice


if __name__ == "__main__":
    main()
