"""A short nnU-Net run of a zoo model, end to end, beside nnU-Net's own 2d U-Net.

On a synthetic fundus dataset (``--size`` pixels, 3 channels) this runs what a user runs:
``nnUNetv2_plan_and_preprocess -c 2d``, ``segzoo-nnunet plan`` (random init, no LoRA),
``segzoo-nnunet train`` (compiled regionally on CUDA, as by default), ``segzoo-nnunet
predict``, then ``nnUNetv2_train ... 2d`` with nnU-Net's own trainer for as many epochs
and iterations (``benchmarks/nnunet_trainers``). It reports the wall time of each stage
and the training loop's images/s from the last epoch's log line, to hold against
``bench_models.py``'s raw figure for the same model and batch: their ratio says how much
of the step nnU-Net's data loading and bookkeeping cost.

    python benchmarks/bench_nnunet_training.py --device cuda              # ViT-L at 512 (GPU)
    python benchmarks/bench_nnunet_training.py --model segformer_dinov3_small --size 64 \\
        --epochs 1 --iterations 2 --tiny                                   # a quick CPU check
    python benchmarks/bench_nnunet_training.py --stages zoo --torchrun 1 --fold 1 --no-predict  # DDP path
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
from benchmarks.results_file import append_results  # noqa: E402
from nnunet_bridge.demo.synthetic import write_fundus_dataset  # noqa: E402

DATASET_ID = 994
THROUGHPUT = re.compile(r"training throughput: ([\d.]+) images/s \((\d+) iterations of batch (\d+)")
TINY_MODEL = {"decoder_hidden_size": 32, "kwargs": {"backbone_kwargs": {"depth": 2, "embed_dim": 64, "num_heads": 2}}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="segformer_dinov3_large")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--cases", type=int, default=20, help="training cases (2 more are predicted)")
    parser.add_argument("--batch", type=int, default=None,
                        help="training batch (default: what `segzoo-nnunet plan` chooses); match bench_models'")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    parser.add_argument("--workers", type=int, default=8, help="nnU-Net preprocessing and augmentation workers")
    parser.add_argument("--stages", nargs="+", default=["zoo", "unet"], choices=["zoo", "unet"],
                        help="zoo: plan, train and predict the zoo model; unet: train nnU-Net's own 2d U-Net")
    parser.add_argument("--tiny", action="store_true", help="a 2-block, 64-wide backbone (CPU checks)")
    parser.add_argument("--torchrun", type=int, default=0, metavar="N",
                        help="train the zoo model through torchrun with N processes: the DDP code path "
                             "(1 on one GPU; with --device cpu, gloo)")
    parser.add_argument("--fold", default="0", help="fold to train (default 0)")
    parser.add_argument("--no-predict", action="store_true", help="skip the zoo model's prediction stage")
    parser.add_argument("--work", type=Path, default=None, help="nnU-Net folders (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also append the result to this file")
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="segzoo_nnunet_bench_"))
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
               nnUNet_results=str(work / "results"), nnUNet_def_n_proc=str(args.workers),
               nnUNet_n_proc_DA=str(args.workers),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               nnUNet_extTrainer=str(ROOT / "benchmarks" / "nnunet_trainers"),
               SEGZOO_BENCH_EPOCHS=str(args.epochs), SEGZOO_BENCH_ITERATIONS=str(args.iterations))
    result: dict = {"model": args.model, "device": args.device, "size": args.size, "epochs": args.epochs,
                    "iterations": args.iterations, "seconds": {}}
    seconds = result["seconds"]

    if not list((work / "preprocessed").glob(f"Dataset{DATASET_ID}_*/nnUNetPlans_2d")):  # a second call reuses it
        write_fundus_dataset(env["nnUNet_raw"], DATASET_ID, num_train=args.cases, num_test=2, size=args.size,
                             channels=3)
        seconds["plan_and_preprocess"] = run_stage(
            [sys.executable, "-m", "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints", "-d",
             str(DATASET_ID), "-c", "2d", "-np", str(args.workers), "-npfp", str(args.workers)], env)
    if "zoo" in args.stages:
        run_zoo(args, work, env, result)
    if "unet" in args.stages:
        seconds["unet_train"] = run_stage(
            [sys.executable, "-m", "nnunetv2.run.run_training", str(DATASET_ID), "2d", "0",
             "-tr", "nnUNetTrainerShortRun", "-device", args.device], env)
        result["unet_loop"] = last_throughput(fold_folder(work, "nnUNetTrainerShortRun", "2d"))
    print(json.dumps(result, indent=1), flush=True)
    append_results(args.json, result)
    return result


def run_zoo(args: argparse.Namespace, work: Path, env: dict, result: dict) -> None:
    """segzoo-nnunet plan, train (compiled on CUDA by default) and predict."""
    seconds = result["seconds"]
    config = work / "zoo.yaml"
    model = {"name": args.model, "pretrained": False, **(TINY_MODEL if args.tiny else {})}
    config.write_text(yaml.safe_dump({
        "model": model, "lora": {"enabled": False},
        "train": {"num_epochs": args.epochs, "num_iterations_per_epoch": args.iterations,
                  "num_val_iterations_per_epoch": 1, "warmup_epochs": 0, "save_every": args.epochs,
                  "batch_size": args.batch},
    }))
    configuration = f"2d_{args.model}"
    bridge = [sys.executable, "-m", "nnunet_bridge.cli"]
    seconds["zoo_plan"] = run_stage([*bridge, "plan", str(DATASET_ID), "--config", str(config)], env)
    train = bridge
    if args.torchrun:  # the processes torchrun starts join its process group: nnU-Net's DDP mode
        train = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                 str(args.torchrun), "-m", "nnunet_bridge"]
        result["torchrun_processes"] = args.torchrun
    seconds["zoo_train"] = run_stage([*train, "train", str(DATASET_ID), configuration, args.fold, "-device",
                                      args.device], env)
    zoo_fold = fold_folder(work, "nnUNetTrainerSegZoo", configuration, args.fold)
    result["zoo_loop"] = last_throughput(zoo_fold)
    log = latest_log(zoo_fold)
    result["zoo_compiled"] = "Compiling the zoo model regionally" in log
    if args.torchrun:
        result["zoo_ddp"] = "DistributedDataParallel over" in log
    if args.no_predict:
        return
    images = next((work / "raw").glob("Dataset*")) / "imagesTs"
    seconds["zoo_predict"] = run_stage([*bridge, "predict", "-i", str(images), "-o", str(work / "predicted"),
                                        "-d", str(DATASET_ID), "-c", configuration, "-f", args.fold,
                                        "-device", args.device], env)
    result["predicted_files"] = len(list((work / "predicted").glob("*.png")))


def run_stage(cmd: list[str], env: dict) -> float:
    """Run one stage, its output streamed (long stages show their progress); return its wall time."""
    print(f"$ {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    return round(time.perf_counter() - start, 1)


def fold_folder(work: Path, trainer: str, configuration: str, fold: str = "0") -> Path:
    dataset = next((work / "results").glob(f"Dataset{DATASET_ID}_*"))
    return dataset / f"{trainer}__nnUNetPlans__{configuration}" / f"fold_{fold}"


def latest_log(fold: Path) -> str:
    return max(fold.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime_ns).read_text()


def last_throughput(fold: Path) -> dict:
    """The last epoch's loop throughput (the first one includes compilation)."""
    matches = THROUGHPUT.findall(latest_log(fold))
    if not matches:
        raise RuntimeError(f"no 'training throughput' line in the training log of {fold}")
    images_s, iterations, batch = matches[-1]
    return {"images_s": float(images_s), "iterations": int(iterations), "batch": int(batch),
            "epochs_logged": len(matches)}


if __name__ == "__main__":
    main()
