"""How much of nnU-Net's sliding-window inference with a zoo model is spent outside the network.

Builds the network exactly as ``nnUNetv2_predict`` does for a zoo configuration: a 2D RGB
dataset's plans (written to a temporary ``nnUNet_preprocessed``) get a zoo configuration
from :func:`nnunet_bridge.plans.plan`, and ``nnUNetTrainerSegZoo.build_network_architecture``
turns the plans' ``arch_kwargs`` into the network (random weights: this times, it does not
segment). An ``nnUNetPredictor`` (Gaussian weighting, ``tile_step_size`` 0.5 by default,
``perform_everything_on_device``) then predicts a 1024x1024 3-channel image, and timers on
forward hooks split the wall time into

- ``model``: inside the zoo model's forward (the ViT, neck and head, with their upsampling),
- ``wrapper``: ``ZooNetwork``'s own work around it (float cast, mean/std, logit clamp),
- ``outside``: everything else (padding, tiling, Gaussian weighting, fp16 accumulation,
  mirroring flips, the final division and inf check; with ``--full`` also preprocessing,
  resampling and argmax).

The fraction *outside the network* counts ``wrapper`` as outside (it is normalisation and
casting, not the model). Each measurement is repeated and the fastest repeat is reported,
with the spread, because the machine may be shared. Prints JSON lines and a table.

    python benchmarks/bench_nnunet_inference.py                       # small ViT, patch 512, CPU
    python benchmarks/bench_nnunet_inference.py --mirroring --full    # + test-time mirroring, full path
    python benchmarks/bench_nnunet_inference.py --profile             # where the outside time goes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
from benchmarks.results_file import append_results  # noqa: E402
DATASET = "Dataset999_InferenceBench"


@dataclass
class Result:
    path: str  # "sliding_window" (predict_sliding_window_return_logits) or "full" (predict_single_npy_array)
    model: str
    patch_size: int
    image_size: int
    mirroring: bool
    tiles: int
    forwards: int
    total_s: float
    model_s: float
    wrapper_s: float
    outside_s: float
    fraction_outside: float  # (total - time in the zoo model) / total; the wrapper counts as outside
    total_s_spread: list[float]  # min, median, max over repeats
    fraction_outside_spread: list[float]
    device: str
    threads: int
    machine: str


class ForwardTimer:
    """Wall time spent inside a module's forward, from a pre-hook and a post-hook (CPU: synchronous)."""

    def __init__(self, module: nn.Module, sync: Callable[[], None]):
        self.seconds, self.calls, self._start, self._sync = 0.0, 0, 0.0, sync
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0

    def _pre(self, module: nn.Module, args: Any) -> None:
        self._sync()
        self._start = time.perf_counter()

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._start
        self.calls += 1


def setup(args: argparse.Namespace, workdir: Path):
    """Plans with a zoo configuration, the network nnU-Net builds from them, and a predictor."""
    os.environ["nnUNet_preprocessed"] = str(workdir / "preprocessed")
    os.environ["nnUNet_results"] = str(workdir / "results")
    os.environ["nnUNet_raw"] = str(workdir / "raw")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["nnUNet_compile"] = "f"  # eager: the forward hooks time the modules themselves
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_bridge.config import load_config
    from nnunet_bridge.plans import plan
    from nnunet_bridge.trainer import nnUNetTrainerSegZoo

    folder = workdir / "preprocessed" / DATASET
    folder.mkdir(parents=True)
    dataset_json = {"channel_names": {"0": "rgb_to_0_1", "1": "rgb_to_0_1", "2": "rgb_to_0_1"},
                    "labels": {"background": 0, **{f"class{i}": i for i in range(1, args.num_classes)}},
                    "numTraining": 1, "file_ending": ".png"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    (folder / "nnUNetPlans.json").write_text(json.dumps(_rgb_2d_plans(args.image_size)))
    config = {"model": {"name": args.model, "pretrained": False}, "lora": {"enabled": args.lora},
              "train": {"patch_size": [args.patch_size, args.patch_size], "batch_size": 2}}
    configuration = plan(DATASET, load_config(config), verbose=False)
    plans_manager = PlansManager(json.loads((folder / "nnUNetPlans.json").read_text()))
    configuration_manager = plans_manager.get_configuration(configuration)
    num_heads = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    # what nnUNetPredictor.initialize_from_trained_model_folder does with the checkpoint's trainer
    network = nnUNetTrainerSegZoo.build_network_architecture(
        plans_manager, configuration_manager, 3, num_heads, enable_deep_supervision=False)
    device = torch.device(args.device)
    predictor = nnUNetPredictor(tile_step_size=args.tile_step_size, use_gaussian=True,
                                use_mirroring=args.mirroring, perform_everything_on_device=True,
                                device=device, verbose=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration_manager, [network.state_dict()],
                                    dataset_json, nnUNetTrainerSegZoo.__name__, (0, 1))
    return predictor, network


def run(args: argparse.Namespace) -> list[Result]:
    torch.manual_seed(0)
    results = []
    with tempfile.TemporaryDirectory(prefix="segzoo_bench_nnunet_") as tmp:
        predictor, network = setup(args, Path(tmp))
        device = torch.device(args.device)
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        wrapper_timer, model_timer = ForwardTimer(network, sync), ForwardTimer(network.model, sync)
        rng = np.random.default_rng(0)
        # nnU-Net's layout for a 2D image: (channels, 1, height, width); preprocessed = in [0, 1]
        raw = rng.integers(1, 256, (3, 1, args.image_size, args.image_size)).astype(np.float32)
        preprocessed = torch.from_numpy(raw / 255.0)
        paths: dict[str, Callable[[], Any]] = {
            "sliding_window": lambda: predictor.predict_sliding_window_return_logits(preprocessed),
        }
        if args.full:
            paths["full"] = lambda: predictor.predict_single_npy_array(raw, {"spacing": [999.0, 1.0, 1.0]})
        tiles = len(predictor._internal_get_sliding_window_slicers(preprocessed.shape[1:]))
        if args.profile:
            profile(paths["sliding_window"], network, args)
        for name, fn in paths.items():
            results.append(measure(name, fn, wrapper_timer, model_timer, tiles, sync, args))
    return results


def measure(name: str, fn: Callable[[], Any], wrapper_timer: ForwardTimer, model_timer: ForwardTimer,
            tiles: int, sync: Callable[[], None], args: argparse.Namespace) -> Result:
    for _ in range(args.warmup):
        fn()
    runs = []
    for _ in range(args.repeats):
        wrapper_timer.reset()
        model_timer.reset()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        total = time.perf_counter() - start
        runs.append((total, wrapper_timer.seconds, model_timer.seconds, model_timer.calls))
    total, wrapper, model_s, calls = min(runs)
    fractions = [(t - m) / t for t, _, m, _ in runs]
    return Result(
        path=name, model=args.model, patch_size=args.patch_size, image_size=args.image_size,
        mirroring=args.mirroring, tiles=tiles, forwards=calls, total_s=round(total, 3),
        model_s=round(model_s, 3), wrapper_s=round(wrapper - model_s, 4), outside_s=round(total - wrapper, 3),
        fraction_outside=round((total - model_s) / total, 4),
        total_s_spread=[round(v, 3) for v in _spread([r[0] for r in runs])],
        fraction_outside_spread=[round(v, 4) for v in _spread(fractions)],
        device=_device_name(torch.device(args.device)), threads=torch.get_num_threads(), machine=args.machine,
    )


def profile(fn: Callable[[], Any], network: nn.Module, args: argparse.Namespace) -> None:
    """torch.profiler over one sliding-window prediction: the ops outside the zoo model, by self time."""
    from torch.profiler import ProfilerActivity, profile as torch_profile, record_function

    region: list[Any] = []

    def enter(*_: Any) -> None:
        region.append(record_function("zoo_model"))
        region[-1].__enter__()

    def leave(*_: Any) -> None:
        region.pop().__exit__(None, None, None)

    handle, post = network.model.register_forward_pre_hook(enter), network.model.register_forward_hook(leave)
    try:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
        with torch_profile(activities=activities) as prof:
            fn()
    finally:
        handle.remove()
        post.remove()
    # the zoo model's ops are descendants of "zoo_model"; every other op ran outside the model
    outside: dict[str, list[float]] = {}
    inside_us = 0.0
    for event in prof.events():
        if event.name == "zoo_model":
            inside_us += event.cpu_time_total
            continue
        parent = event.cpu_parent
        while parent is not None and parent.name != "zoo_model":
            parent = parent.cpu_parent
        if parent is None:
            entry = outside.setdefault(event.name, [0.0, 0])
            entry[0] += event.self_cpu_time_total
            entry[1] += 1
    print(f"profile: {inside_us / 1e6:.2f} s inside the zoo model; ops outside it by self CPU time:")
    for name, (us, calls) in sorted(outside.items(), key=lambda kv: -kv[1][0])[:args.profile_rows]:
        print(f"  {us / 1e3:9.1f} ms  {calls:6d} calls  {name}")


def _spread(values: list[float]) -> list[float]:
    return [min(values), statistics.median(values), max(values)]


def _rgb_2d_plans(image_size: int) -> dict[str, Any]:
    """The 2d plans nnU-Net writes for a PNG RGB dataset of ``image_size`` square images."""
    return {
        "dataset_name": DATASET, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [999.0, 1.0, 1.0],
        "original_median_shape_after_transp": [1, image_size, image_size],
        "image_reader_writer": "NaturalImage2DIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(c): {"max": 255.0, "mean": 120.0, "median": 120.0, "min": 0.0, "percentile_00_5": 1.0,
                     "percentile_99_5": 254.0, "std": 60.0} for c in range(3)},
        "configurations": {"2d": {
            "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 12, "patch_size": [512, 512], "median_image_size_in_voxels": [image_size, image_size],
            "spacing": [1.0, 1.0], "normalization_schemes": ["RGBTo01Normalization"] * 3,
            "use_mask_for_norm": [False] * 3,
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": {}, "_kw_requires_import": []},
            "batch_dice": True,
        }},
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def print_table(results: list[Result]) -> None:
    header = (f"{'path':<15}{'model':<26}{'patch':>6}{'mirror':>7}{'tiles':>6}{'fwd':>5}{'total s':>9}"
              f"{'model s':>9}{'wrap s':>8}{'outside s':>10}{'% outside':>10}  spread total s / % outside")
    print(header)
    print("-" * len(header))
    for r in results:
        spread_t = "/".join(f"{v:.2f}" for v in r.total_s_spread)
        spread_f = "/".join(f"{100 * v:.1f}" for v in r.fraction_outside_spread)
        print(f"{r.path:<15}{r.model:<26}{r.patch_size:>6}{str(r.mirroring):>7}{r.tiles:>6}{r.forwards:>5}"
              f"{r.total_s:>9.2f}{r.model_s:>9.2f}{r.wrapper_s:>8.3f}{r.outside_s:>10.3f}"
              f"{100 * r.fraction_outside:>9.1f}%  {spread_t} / {spread_f}")
    if results:
        print(f"machine: {results[0].machine}; device: {results[0].device}; torch threads: {results[0].threads}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="segformer_dinov3_small")
    parser.add_argument("--patch-size", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--num-classes", type=int, default=3, help="including background")
    parser.add_argument("--tile-step-size", type=float, default=0.5)
    parser.add_argument("--mirroring", action="store_true", help="test-time mirroring (nnU-Net's default)")
    parser.add_argument("--lora", action="store_true", help="keep the plans' default LoRA adapters (unmerged)")
    parser.add_argument("--full", action="store_true",
                        help="also time predict_single_npy_array (preprocessing, resampling, argmax)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the fastest is reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's table of one prediction")
    parser.add_argument("--profile-rows", type=int, default=20)
    parser.add_argument("--machine", default=platform.node(), help="a name for the machine in the output")
    parser.add_argument("--json", type=Path, default=None, help="also append the JSON lines to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    results = run(args)
    for r in results:
        print(json.dumps(asdict(r)))
    append_results(args.json, *(asdict(r) for r in results))
    print_table(results)
    return results


if __name__ == "__main__":
    main()
