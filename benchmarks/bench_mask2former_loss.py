"""Mask2Former's training loss: transformers' per-image matcher vs segzoo's batched matcher.

Times one call of ``Mask2FormerLoss`` (last layer + auxiliary layers, as in training)
with each matcher on the same outputs, round-robin in one run, and the matchers alone.
The batched matcher computes the cost matrices of a whole batch on the device and
copies them to the host once per layer instead of once per image and layer, which
matters on a GPU, where every copy waits for the device.

    python benchmarks/bench_mask2former_loss.py                       # CPU
    python benchmarks/bench_mask2former_loss.py --device cuda --batch 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers.models.mask2former.modeling_mask2former import Mask2FormerHungarianMatcher

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from benchmarks.results_file import append_results  # noqa: E402
from segzoo.heads import create_mask2former_head  # noqa: E402
from segzoo.heads.mask2former import label_map_to_mask_targets  # noqa: E402
from segzoo.heads.mask_matching import BatchedHungarianMatcher  # noqa: E402


def synthetic_outputs(args: argparse.Namespace, device: torch.device):
    """Set outputs of a ``decoder_layers``-layer head at 1/4 of the input, and a label map with up to 4 classes."""
    size, mask_size = args.img_size, args.img_size // 4
    generator = torch.Generator(device="cpu").manual_seed(0)

    def layer():
        return {"masks_queries_logits": torch.randn(args.batch, args.queries, mask_size, mask_size,
                                                    generator=generator).to(device),
                "class_queries_logits": torch.randn(args.batch, args.queries, args.num_classes + 1,
                                                    generator=generator).to(device)}

    layers = [layer() for _ in range(args.decoder_layers)]
    label_map = torch.randint(0, args.num_classes, (args.batch, size // 32, size // 32), generator=generator)
    label_map = label_map.repeat_interleave(32, 1).repeat_interleave(32, 2).to(device)  # blocky regions
    return layers[-1], layers[:-1], label_map


def time_call(fn, device: torch.device, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--num-classes", type=int, default=4)
    parser.add_argument("--decoder-layers", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also append the result to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    head = create_mask2former_head([64] * 4, args.num_classes, decoder_layers=args.decoder_layers).to(device)
    criterion = head.criterion
    last, aux, label_map = synthetic_outputs(args, device)
    mask_labels, class_labels = label_map_to_mask_targets(label_map, args.num_classes)
    matchers = {
        "transformers": Mask2FormerHungarianMatcher(head.config.class_weight, head.config.mask_weight,
                                                    head.config.dice_weight, head.config.train_num_points),
        "batched": BatchedHungarianMatcher(head.config.class_weight, head.config.mask_weight,
                                           head.config.dice_weight, head.config.train_num_points),
    }
    loss_s: dict[str, float] = {}
    match_s: dict[str, float] = {}
    for name, matcher in matchers.items():
        criterion.matcher = matcher
        with torch.no_grad():
            loss_s[name] = time_call(lambda: criterion(last["masks_queries_logits"], last["class_queries_logits"],
                                                       mask_labels, class_labels, aux), device, args.repeats)
        match_s[name] = time_call(lambda: matcher(last["masks_queries_logits"], last["class_queries_logits"],
                                                  mask_labels, class_labels), device, args.repeats)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "batch": args.batch, "img_size": args.img_size, "queries": args.queries, "layers": args.decoder_layers,
        "loss_s": loss_s, "matcher_s": match_s,
        "loss_speedup": loss_s["transformers"] / loss_s["batched"],
        "matcher_speedup": match_s["transformers"] / match_s["batched"],
    }
    print(json.dumps(result, indent=1))
    append_results(args.json, result)
    return result


if __name__ == "__main__":
    main()
