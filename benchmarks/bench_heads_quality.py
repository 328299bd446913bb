"""Segmentation quality of the heads on one small ViT, with the same budget, on thin structures.

Trains each head (SegFormer, UperNet, DPT, EoMT by default) over the same small DINOv2-style
ViT from the same random initialisation, with the same batches and optimiser settings, on
synthetic fundus images whose vessels are 1-4 px wide, then reports each class's Dice on
held-out images per seed, and writes a picture: Dice per head and class, and one held-out
case as image / truth / each head's prediction.

    python benchmarks/bench_heads_quality.py                        # 4 heads x 2 seeds, CPU (minutes)
    python benchmarks/bench_heads_quality.py --heads segformer dpt --seeds 0 --png heads.png
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
from benchmarks.bench_neck_quality import dice_per_class, fundus_tensors  # noqa: E402
from benchmarks.results_file import append_results  # noqa: E402
import segzoo  # noqa: E402
from nnunet_bridge.demo.synthetic import LABELS  # noqa: E402

SMALL_VIT = {"depth": 4, "embed_dim": 96, "num_heads": 3}  # the demo's backbone
# decoders as narrow as the demo's, so that no head's width dwarfs this backbone; EoMT (no decoder) runs
# its queries through the last of the 4 blocks, about the share the paper's 4 of 24 blocks take in ViT-L
HEAD_KWARGS = {"segformer": {"decoder_hidden_size": 64}, "upernet": {"decoder_hidden_size": 64},
               "dpt": {"decoder_hidden_size": 64}, "mask2former": {"decoder_hidden_size": 64},
               "eomt": {"num_blocks": 1}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", nargs="+", default=["segformer", "upernet", "dpt", "eomt"])
    parser.add_argument("--backbone", default="dinov2_small", help="registered backbone; SMALL_VIT sizes it down")
    parser.add_argument("--size", type=int, default=112, help="image side (a multiple of the patch size)")
    parser.add_argument("--train-cases", type=int, default=32)
    parser.add_argument("--test-cases", type=int, default=8)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--png", type=Path, default=Path("heads_quality.png"), help="the picture")
    parser.add_argument("--json", type=Path, default=None, help="also append the result to this file")
    args = parser.parse_args(argv)

    train = fundus_tensors(args.train_cases, args.size, first_seed=0)
    test = fundus_tensors(args.test_cases, args.size, first_seed=10_000)
    result = {"backbone": args.backbone, "backbone_kwargs": SMALL_VIT, "head_kwargs": HEAD_KWARGS, "size": args.size, "steps": args.steps,
              "batch": args.batch, "seeds": args.seeds, "threads": torch.get_num_threads(), "dice": {},
              "seconds": {}}
    predictions = {}
    for head in args.heads:
        for seed in args.seeds:
            start = time.perf_counter()
            model = _train(args, head, seed, train)
            key = f"{head}/{seed}"
            result["dice"][key] = dice_per_class(model, test)
            result["seconds"][key] = round(time.perf_counter() - start, 1)
            if seed == args.seeds[0]:
                with torch.no_grad():
                    predictions[head] = model(test[0][:1]).argmax(1)[0].numpy()
            print(f"{key:14s} trained in {result['seconds'][key]:.0f} s: Dice {result['dice'][key]}", flush=True)
    result["mean"] = {head: {name: round(float(np.mean([result["dice"][f"{head}/{s}"][name] for s in args.seeds])), 3)
                             for name in LABELS if name != "background"} for head in args.heads}
    print(json.dumps(result), flush=True)
    append_results(args.json, result)
    _picture(args, result, test, predictions)
    return result


def _train(args: argparse.Namespace, head: str, seed: int, data: tuple[torch.Tensor, torch.Tensor]) -> torch.nn.Module:
    torch.manual_seed(seed)  # the same initial backbone under every head
    model = segzoo.create_model(f"{head}_{args.backbone}", num_classes=len(LABELS),
                                backbone_kwargs=dict(SMALL_VIT), **HEAD_KWARGS.get(head, {})).train()
    optimizer = torch.optim.AdamW(segzoo.optim.param_groups(model, lr=args.lr, weight_decay=0.05), lr=args.lr)
    order = torch.Generator().manual_seed(seed)  # the same batches for every head
    images, labels = data
    for step in range(args.steps):
        if hasattr(model, "set_mask_annealing"):  # EoMT: masked attention annealed away over training
            model.set_mask_annealing(step / args.steps)
        pick = torch.randint(0, len(images), (args.batch,), generator=order)
        outputs = model(images[pick])
        if isinstance(outputs, dict):  # set-prediction heads train with their own loss (as recorded: CE for the others)
            loss = model.compute_loss(outputs, labels[pick])
        else:
            loss = F.cross_entropy(outputs, labels[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 50 == 0:
            print(f"  {head}/{seed}: step {step + 1}/{args.steps}, loss {loss.item():.3f}", flush=True)
    if hasattr(model, "set_mask_annealing"):
        model.set_mask_annealing(1.0)
    return model.eval()


def _picture(args: argparse.Namespace, result: dict, test: tuple[torch.Tensor, torch.Tensor],
             predictions: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = [name for name in LABELS if name != "background"]
    fig = plt.figure(figsize=(3.2 * (2 + len(args.heads)), 6.4))
    bars = fig.add_subplot(2, 1, 1)
    width = 0.8 / len(args.heads)
    for i, head in enumerate(args.heads):
        means = [result["mean"][head][c] for c in classes]
        bars.bar(np.arange(len(classes)) + i * width, means, width, label=head)
        for s in args.seeds:  # each seed's Dice as a dot over the mean's bar
            bars.scatter(np.arange(len(classes)) + i * width, [result["dice"][f"{head}/{s}"][c] for c in classes],
                         color="black", s=8, zorder=3)
    bars.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes)
    bars.set_ylabel("held-out Dice")
    bars.set_ylim(0, 1)
    bars.legend(ncols=len(args.heads), loc="upper left")
    bars.set_title(f"{args.steps} steps of batch {args.batch}, {args.size} px, seeds {args.seeds} (bars: mean)")
    image = test[0][0].permute(1, 2, 0).numpy() * 0.25 + 0.5
    panels = [("image", np.clip(image, 0, 1)), ("truth", test[1][0].numpy())]
    panels += [(head, predictions[head]) for head in args.heads]
    for i, (title, panel) in enumerate(panels):
        ax = fig.add_subplot(2, len(panels), len(panels) + i + 1)
        ax.imshow(panel, vmin=0, vmax=len(LABELS) - 1, interpolation="nearest") if panel.ndim == 2 else ax.imshow(panel)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.png, dpi=80)
    print(f"picture: {args.png}", flush=True)


if __name__ == "__main__":
    main()
