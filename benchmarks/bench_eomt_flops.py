"""Parameters and forward FLOPs of EoMT models against their backbone alone, per state.

EoMT's cost depends on its masked-attention annealing: a new model (masks on) predicts a
mask before each query block to build its attention mask; a trained one (annealed) runs
the plain blocks and predicts once; training with deep supervision predicts before every
query block whatever the annealing. FLOPs are counted on one image with torch's
``FlopCounterMode`` (no timing, so this runs quickly on a CPU at full size).

    python benchmarks/bench_eomt_flops.py                                  # eomt_dinov3_large @ 512
    python benchmarks/bench_eomt_flops.py --models eomt_dinov3_base eomt_dinov2_large --img-size 256
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from benchmarks.results_file import append_results  # noqa: E402
import segzoo  # noqa: E402


def forward_gflops(fn) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def measure(name: str, img_size: int, num_classes: int) -> dict:
    model = segzoo.create_model(name, num_classes=num_classes).eval()
    x = torch.randn(1, 3, img_size, img_size)
    counts = model.count_parameters()
    row = dict(model=name, img_size=img_size, params_backbone_m=counts["backbone"][1] / 1e6,
               params_total_m=counts["total"][1] / 1e6,
               # the backbone alone on the input padded to whole patches, as the model pads it
               gflops_backbone=forward_gflops(lambda: model.backbone(model._pad_to_patch_multiple(x))))
    row["gflops_masked_eval"] = forward_gflops(lambda: model(x))  # a new model: every query block masks
    model.set_mask_annealing(1.0)
    row["gflops_annealed_eval"] = forward_gflops(lambda: model(x))  # a trained model
    model.train()
    row["gflops_train_forward"] = forward_gflops(lambda: model(x))  # deep supervision: a prediction per block
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["eomt_dinov3_large"])
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--json", type=Path, default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    rows = []
    for name in args.models:
        row = measure(name, args.img_size, args.num_classes)
        rows.append(row)
        print(json.dumps(row))
        base = row["gflops_backbone"]
        print(f"{row['model']} @ {row['img_size']}: params {row['params_total_m']:.1f}M (backbone "
              f"{row['params_backbone_m']:.1f}M); GFLOP/img forward: backbone {base:.0f}, "
              f"trained (annealed) {row['gflops_annealed_eval']:.0f} ({row['gflops_annealed_eval'] / base:.2f}x), "
              f"new (masked) {row['gflops_masked_eval']:.0f} ({row['gflops_masked_eval'] / base:.2f}x), "
              f"training forward {row['gflops_train_forward']:.0f} ({row['gflops_train_forward'] / base:.2f}x)")
    append_results(args.json, *rows)
    return rows


if __name__ == "__main__":
    main()
