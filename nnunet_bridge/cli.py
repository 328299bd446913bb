"""``segzoo-nnunet plan | train | predict | export | compare | stack-slices | env | demo``: nnU-Net v2 with any segzoo model.

::

    segzoo-nnunet plan 996 --model segformer_dinov3_large [--config my.yaml]
    segzoo-nnunet plan 996 --model segformer_dinov3_large --patch-size 896 896   # 2d_segformer_dinov3_large_896
    segzoo-nnunet train 996 2d_segformer_dinov3_large 0 [--c] [--config my.yaml] [-device cpu] [-num_gpus 4]
    torchrun --nproc-per-node 8 -m nnunet_bridge train 996 2d_segformer_dinov3_large 0   # DDP, any number of machines
    segzoo-nnunet predict -i imagesTs -o out -d 996 -c 2d_segformer_dinov3_large -f 0
    segzoo-nnunet export -d 996 -c 2d_segformer_dinov3_large -f 0 -o model.onnx   # + model.json
    segzoo-nnunet compare 996 2d_segformer_dinov3_large 2d -o report   # cross-validation table + PNG
    segzoo-nnunet stack-slices 980 Dataset982_CT25D --neighbours 1   # 2.5D: neighbouring slices as channels
    segzoo-nnunet stack-slices --images-only imagesTs imagesTs_25d --neighbours 1
    segzoo-nnunet env        # the nnUNet_extTrainer line for stock nnUNetv2_* commands
    segzoo-nnunet demo       # synthetic fundus -> plan -> train zoo + U-Net on CPU -> predict -> Dice, PNG, compare

The command sets ``nnUNet_extTrainer`` itself, so nnU-Net finds the bridge trainers.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from typing import Sequence

from . import EXT_TRAINER_DIR, ensure_ext_trainer_path
from .preflight import PreflightError, dataset_name, parse_fold, require_planned, require_trained_folds
from .report.compare import DEFAULT_TRAINERS, CompareError, gather
from .report.compare_report import format_text, write_report
from .trainer_lookup import UnknownTrainerError, bridge_trainers_resolved, find_trainer_class

# Only modules that need nothing beyond the standard library are imported here, so `--help`, `env`
# and argument errors answer at once; each command imports the rest (torch, nnU-Net, the zoo, omegaconf).

__all__ = ["main", "resolve_training_configuration"]

DEFAULT_TRAINER = "nnUNetTrainerSegZoo"
TRUST_HELP = ("load checkpoints as nnU-Net does (torch.load weights_only=False), for a file whose origin you trust; "
              "by default a checkpoint that needs more than weights, numbers and the plans is refused, since "
              "unpickling it could run code")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``segzoo-nnunet``). An error is one line on stderr naming the fix, exit
    status 2; ``--debug`` (anywhere on the line) or ``SEGZOO_DEBUG=1`` shows the traceback instead."""
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # taken out before parsing: predict hands every other option to nnUNetv2_predict
    debug = "--debug" in argv or os.environ.get("SEGZOO_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    rest: list[str] = []
    if argv[:1] == ["predict"] and not {"-h", "--help"} & set(argv):
        # everything but -tr / -device goes to nnUNetv2_predict untouched (argparse would
        # take nnU-Net's -d for an abbreviation of -device)
        argv, rest = _split_predict_args(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    ensure_ext_trainer_path()
    try:
        return int(args.handler(args, rest) or 0)
    except Exception as err:  # noqa: BLE001 - every failure becomes one line unless debugging
        if debug:
            raise
        print(f"segzoo-nnunet {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: Exception) -> str:
    """The message of an error the bridge expects (it names the fix), else its type and first line
    with the way to see the rest."""
    from segzoo import CheckpointError, UnknownModelError

    from .config import ConfigError
    from .slices import SliceStackError
    from .training.divergence import TrainingDivergedError

    expected = (PreflightError, ConfigError, CompareError, UnknownModelError, UnknownTrainerError, FileNotFoundError,
                CheckpointError, TrainingDivergedError, SliceStackError)
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, expected):
        return text
    return f"{type(err).__name__}: {text} (run again with --debug or SEGZOO_DEBUG=1 for the traceback)"


def resolve_training_configuration(dataset: str, configuration: str, config_path: str | None,
                                   plans_identifier: str = "nnUNetPlans") -> str:
    """The zoo configuration to train for ``configuration``.

    A zoo configuration is trained as planned. A plain nnU-Net configuration such as ``2d``
    (the compatibility entry point ``nnUNetv2_train_segformer.py 996 2d 0 --segformer_config my.yaml``)
    trains the zoo configuration derived from the YAML's model section, planned if needed.
    A name the plans do not hold is refused before anything is written: a misspelt zoo
    configuration must not be planned with the default model.
    """
    from .config import load_config
    from .plans import NETWORK_CLASS_NAME, configuration_name_for, load_plans, plan

    require_planned(dataset, configuration, plans_identifier)
    existing = load_plans(dataset, plans_identifier)["configurations"][configuration]
    if existing.get("architecture", {}).get("network_class_name") == NETWORK_CLASS_NAME:
        return configuration
    config = load_config(config_path)
    derived = configuration_name_for(config)
    _refuse_planning_in_each_torchrun_process(derived)
    print(f"Note: {configuration!r} is nnU-Net's own configuration; training the zoo configuration {derived!r} "
          f"derived from {config_path or 'the default config'}")
    return plan(dataset, config, plans_identifier=plans_identifier)


def _refuse_planning_in_each_torchrun_process(configuration: str) -> None:
    from .config import ConfigError
    from .distributed import torchrun_place

    if torchrun_place() is not None:  # every process would write the plans file at once
        raise ConfigError(f"a plain nnU-Net configuration names no zoo model, and under torchrun each process "
                          f"would plan one; run `segzoo-nnunet plan DATASET --config FILE` once, then torchrun the "
                          f"training of the configuration it names ({configuration})")


# -- commands --------------------------------------------------------------------------


def _cmd_plan(args: argparse.Namespace, _rest: list[str]) -> int:
    from segzoo import split_model_name_tag

    from .config import load_config
    from .plans import plan

    overrides: dict = {}
    if args.model:
        name, tag = split_model_name_tag(args.model)
        overrides = {"model": {"name": name, **({"pretrained_tag": tag} if tag else {})}}
    config = load_config(args.config, overrides)
    dataset_name(args.dataset)  # an unknown id: one line, not nnU-Net's traceback
    name = plan(args.dataset, config, configuration_name=args.name, plans_identifier=args.p,
                resample_to=args.patch_size, preprocess=not args.no_preprocess)
    print(f"Train it with: segzoo-nnunet train {args.dataset} {name} 0")
    return 0


def _cmd_stack_slices(args: argparse.Namespace, _rest: list[str]) -> int:
    from .slices import stack_images, stack_slices

    if args.images_only:
        stack_images(args.source, args.destination, args.neighbours, axis=args.slice_axis)
        return 0
    result = stack_slices(args.source, args.destination, args.neighbours, axis=args.slice_axis)
    print(f"Next: nnUNetv2_plan_and_preprocess -d {result.folder.name[len('Dataset'):].split('_')[0]} -c 2d; "
          f"images to predict go through `segzoo-nnunet stack-slices --images-only DIR OUT --neighbours "
          f"{args.neighbours} --slice-axis {result.slice_axis}` first")
    return 0


def _cmd_train(args: argparse.Namespace, _rest: list[str]) -> int:
    import torch

    from .checkpoint_files import TRUST_ENV, check_checkpoint_file
    from .trainer import CONFIG_ENV, PRETRAINED_WEIGHTS_ENV

    if args.c and args.pretrained_weights:
        raise SystemExit("--c continues a run; -pretrained_weights starts a new one. Use one of them.")
    if args.pretrained_weights and not os.path.isfile(args.pretrained_weights):
        raise SystemExit(f"-pretrained_weights: no such file {args.pretrained_weights!r}")
    if args.pretrained_weights:  # refused before anything is planned or a process starts
        check_checkpoint_file(args.pretrained_weights, trusted=args.trust_checkpoint)
    if args.trust_checkpoint:  # the trainer reads --c and -pretrained_weights files, in every process
        os.environ[TRUST_ENV] = "1"
    _check_fold_and_trainer(args.fold, args.tr)  # before anything is planned or a process starts
    configuration = resolve_training_configuration(args.dataset, args.configuration, args.config, args.p)
    if args.config:
        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
    if args.pretrained_weights:
        os.environ[PRETRAINED_WEIGHTS_ENV] = os.path.abspath(args.pretrained_weights)
    device = _device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    elif device.type == "cuda":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)

    from .distributed import TrainingRun, launch_training

    run = TrainingRun(args.dataset, configuration, args.fold, trainer=args.tr, plans_identifier=args.p,
                      device=device.type, continue_training=args.c, only_validation=args.val,
                      disable_checkpointing=args.disable_checkpointing, val_best=args.val_best,
                      save_probabilities=args.npz)
    launch_training(run, num_gpus=args.num_gpus)  # one process, torchrun's, or -num_gpus spawned ones
    return 0


def _cmd_predict(args: argparse.Namespace, rest: list[str]) -> int:
    from nnunetv2.inference.predict_from_raw_data import predict_entry_point

    _check_prediction(rest, args.tr, trust_checkpoint=args.trust_checkpoint)
    forwarded = [*rest, "-tr", args.tr, "-device", _device(args.device).type]
    old_argv = sys.argv
    sys.argv = ["nnUNetv2_predict", *forwarded]
    try:
        with bridge_trainers_resolved():
            predict_entry_point()
    finally:
        sys.argv = old_argv
    return 0


def _cmd_export(args: argparse.Namespace, _rest: list[str]) -> int:
    from .export import export_fold

    _check_fold_and_trainer(args.fold, args.tr)
    require_planned(args.dataset, args.configuration, args.p)
    require_trained_folds(args.dataset, args.configuration, [args.fold], args.tr, args.p, args.chk)
    fold = args.fold if args.fold == "all" else int(args.fold)
    onnx_file, facts = export_fold(args.dataset, args.configuration, fold, args.output, trainer=args.tr,
                                   plans_identifier=args.p, checkpoint=args.chk,
                                   trust_checkpoint=args.trust_checkpoint, verbose=args.verbose)
    print(f"wrote {onnx_file} (checked against the PyTorch network with ONNX Runtime) and {facts}")
    return 0


def _cmd_compare(args: argparse.Namespace, _rest: list[str]) -> int:
    try:
        comparison = gather(args.dataset, args.configurations, trainers=args.trainer, plans_identifier=args.p,
                            folds=args.folds, reference=args.reference, trust_checkpoint=args.trust_checkpoint)
        print(format_text(comparison))
        if args.output:
            paths = write_report(comparison, args.output, figure=not args.no_figure, case=args.case)
            print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    except CompareError as err:
        print(f"segzoo-nnunet compare: error: {err}", file=sys.stderr)
        return 2
    return 0


def _check_fold_and_trainer(fold: str, trainer: str) -> None:
    parse_fold(fold)
    find_trainer_class(trainer)  # the bridge's directly; others through nnU-Net's search, as it will


def _check_prediction(rest: list[str], trainer: str, trust_checkpoint: bool = False) -> None:
    """Dataset, configuration, folds and checkpoints of an ``nnUNetv2_predict`` command line,
    checked before nnU-Net starts (which would otherwise fail with a traceback, and loads the
    checkpoints with ``weights_only=False``: one that would run code is refused here)."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from .checkpoint_files import check_checkpoint_file

    # exact option names only: argparse would read nnU-Net's -disable_tta as -d isable_tta
    values: dict[str, list[str]] = {}
    option = None
    for item in rest:
        if item.startswith("-") and not item.lstrip("-").replace(".", "").isdigit():
            option = item if item in ("-i", "-d", "-c", "-p", "-f", "-chk") else None
            if option:
                values[option] = []
        elif option:
            values[option].append(item)
    if not values.get("-d") or not values.get("-c"):
        return  # nnU-Net's own parser names what is missing
    dataset, configuration = values["-d"][0], values["-c"][0]
    plans = (values.get("-p") or ["nnUNetPlans"])[0]
    folds = values.get("-f") or ["0", "1", "2", "3", "4"]  # nnU-Net's default: all five
    checkpoint = (values.get("-chk") or ["checkpoint_final.pth"])[0]
    find_trainer_class(trainer)
    require_planned(dataset, configuration, plans)
    require_trained_folds(dataset, configuration, folds, trainer, plans, checkpoint)
    for fold in folds:
        check_checkpoint_file(os.path.join(get_output_folder(dataset, trainer, plans, configuration, parse_fold(fold)),
                                           checkpoint), trusted=trust_checkpoint)
    if values.get("-i"):  # nnU-Net predicts NaN / Inf inputs without a word
        from .input_check import check_inputs_finite

        check_inputs_finite(values["-i"][0], get_output_folder(dataset, trainer, plans, configuration))


def _cmd_env(_args: argparse.Namespace, _rest: list[str]) -> int:
    print(f"export nnUNet_extTrainer={EXT_TRAINER_DIR}")
    return 0


def _cmd_demo(args: argparse.Namespace, _rest: list[str]) -> int:
    from .demo.pipeline import run_demo

    if args.model and not args.pretrained:
        raise ValueError("--model names the pretrained model to fine-tune: add --pretrained (without it the demo "
                         "trains a small ViT from scratch)")
    run_demo(out=args.out, epochs=args.epochs, iterations=args.iterations, num_train=args.cases,
             size=args.size, device=args.device, seed=args.seed, pretrained=args.pretrained, model=args.model)
    return 0


# -- parser ----------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segzoo-nnunet", allow_abbrev=False,
        description="Train, continue, validate and predict segzoo models with nnU-Net v2. An error is one "
                    "line; --debug (anywhere on the line) or SEGZOO_DEBUG=1 shows its traceback.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{plan,train,predict,export,compare,stack-slices,env,demo}")

    p = sub.add_parser("plan", allow_abbrev=False, help="add a zoo configuration (2d_<model>) to a dataset's nnU-Net plans",
                       description="Add a configuration inheriting from '2d' whose network is a segzoo model. "
                                   "Run nnUNetv2_plan_and_preprocess -d ID -c 2d first.")
    p.add_argument("dataset", help="dataset id or name (e.g. 996 or Dataset996_Fundus)")
    p.add_argument("--model", help="registered zoo name, optionally with a tag (segformer_dinov3_large.lvd1689m); "
                                   "default: the config's model section")
    p.add_argument("--config", help="YAML with model / lora / train sections (unknown keys are an error)")
    p.add_argument("--name", help="configuration name (default 2d_<model name>)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("--patch-size", nargs=2, type=int, metavar=("H", "W"),
                   help="high-resolution plan: resample so that the median image is H x W and train on H x W "
                        "patches (configuration 2d_<model>_<H>); nnU-Net's preprocessing of it runs right after")
    p.add_argument("--no-preprocess", action="store_true",
                   help="with --patch-size: print the nnUNetv2_preprocess command instead of running it")
    p.set_defaults(handler=_cmd_plan)

    t = sub.add_parser("train", allow_abbrev=False, help="train (or continue with --c) a zoo configuration, like nnUNetv2_train",
                       description="nnUNetv2_train with the bridge trainer. A plain configuration such as '2d' "
                                   "trains the zoo configuration derived from --config (planned if missing).")
    t.add_argument("dataset", help="dataset id or name")
    t.add_argument("configuration", help="zoo configuration (2d_<model>), or 2d to derive it from --config")
    t.add_argument("fold", help="fold 0-4 or 'all'")
    t.add_argument("--config", "--segformer_config", dest="config",
                   help="YAML; its train section overrides the planned one (model/LoRA must match the plan)")
    t.add_argument("-tr", default=DEFAULT_TRAINER, help=f"trainer class (default {DEFAULT_TRAINER})")
    t.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    t.add_argument("-pretrained_weights", help="nnU-Net checkpoint of the same zoo model to start from; "
                                               "a different number of classes re-initialises the head")
    t.add_argument("-num_gpus", type=int, default=None,
                   help="train data-parallel in N processes on this machine, one per GPU (with -device cpu: "
                        "N CPU processes on gloo); under torchrun leave it out")
    t.add_argument("-device", default="auto", choices=["auto", "cuda", "cpu", "mps"],
                   help="device (default: cuda if available, else cpu)")
    t.add_argument("--c", action="store_true", help="continue from the latest checkpoint")
    t.add_argument("--val", action="store_true", help="only run the final validation")
    t.add_argument("--val_best", action="store_true", help="validate with checkpoint_best.pth")
    t.add_argument("--npz", action="store_true", help="also save validation softmax outputs")
    t.add_argument("--disable_checkpointing", action="store_true", help="write no checkpoints")
    t.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    t.set_defaults(handler=_cmd_train)

    r = sub.add_parser("predict", allow_abbrev=False, help="nnUNetv2_predict with the bridge trainer (all its options are accepted)",
                       description="Runs nnUNetv2_predict; every option of it (-i -o -d -c -f -chk -npp -nps "
                                   "...) is passed through. Outputs are identical to the stock command with "
                                   f"-tr {DEFAULT_TRAINER}.")
    r.add_argument("-tr", default=DEFAULT_TRAINER, help=f"trainer the model was trained with (default {DEFAULT_TRAINER})")
    r.add_argument("-device", default="auto", choices=["auto", "cuda", "cpu", "mps"],
                   help="device (default: cuda if available, else cpu)")
    r.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    r.set_defaults(handler=_cmd_predict)

    x = sub.add_parser("export", allow_abbrev=False, help="a trained fold as ONNX (network + its input normalisation) "
                                                          "and a JSON of what a deployer needs",
                       description="Writes OUTPUT (one self-contained ONNX file, checked against PyTorch with ONNX "
                                   "Runtime; OUTPUT.data beside it only above ONNX's 2 GB limit) and OUTPUT.json "
                                   "(patch size, spacing, channels and their normalisation, labels).")
    x.add_argument("-d", dest="dataset", required=True, help="dataset id or name")
    x.add_argument("-c", dest="configuration", required=True, help="zoo configuration, e.g. 2d_segformer_dinov3_large")
    x.add_argument("-f", dest="fold", required=True, help="fold 0-4 or 'all'")
    x.add_argument("-o", dest="output", required=True, help="output .onnx file")
    x.add_argument("-tr", default=DEFAULT_TRAINER, help=f"trainer the fold was trained with (default {DEFAULT_TRAINER})")
    x.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    x.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file (default checkpoint_final.pth)")
    x.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    x.add_argument("--verbose", action="store_true", help="show the exporter's own notes and warnings")
    x.set_defaults(handler=_cmd_export)

    c = sub.add_parser("compare", allow_abbrev=False,
                       help="cross-validation Dice of trained configurations side by side (table, paired "
                            "differences, training cost, PNG)",
                       description="Reads each fold's validation/summary.json under $nnUNet_results for zoo and "
                                   "nnU-Net configurations alike; folds that are missing, still training or not "
                                   "validated are named, not skipped silently.")
    c.add_argument("dataset", help="dataset id or name")
    c.add_argument("configurations", nargs="*", metavar="CONFIG",
                   help="configurations (2d_segformer_dinov3_large, 2d, 3d_fullres) or results folder names "
                        "(nnUNetTrainer__nnUNetPlans__2d); default: every trained run of the dataset")
    c.add_argument("--trainer", nargs="+", default=list(DEFAULT_TRAINERS),
                   help="trainers whose runs a bare configuration name means, first match wins "
                        f"(default {' '.join(DEFAULT_TRAINERS)})")
    c.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="folds (default 0 1 2 3 4)")
    c.add_argument("--reference", help="run the others are paired against (default nnU-Net's 2d U-Net, "
                                       "nnUNetTrainer__nnUNetPlans__2d, if compared; else the first)")
    c.add_argument("-p", default="nnUNetPlans", help="plans identifier of bare configuration names")
    c.add_argument("-o", "--output", help="report folder: comparison.md / .csv / .png, paired_differences.csv")
    c.add_argument("--case", help="validation case to show in the picture (default: the first one all runs predicted)")
    c.add_argument("--no-figure", action="store_true", help="write the tables only")
    c.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    c.set_defaults(handler=_cmd_compare)

    s = sub.add_parser("stack-slices", allow_abbrev=False,
                       help="2.5D: a new raw dataset whose channels are each slice and its neighbours",
                       description="Writes a raw nnU-Net dataset in which every channel of every volume is joined by "
                                   "its K neighbouring slices on each side along nnU-Net's 2d slice axis (edge "
                                   "slices repeated), normalised as the channel it comes from; labels and geometry "
                                   "unchanged. Plan, train and predict it as any dataset.")
    s.add_argument("source", help="raw dataset (id, DatasetNNN_Name or folder); with --images-only a folder of images")
    s.add_argument("destination", help="new dataset DatasetNNN_Name (written next to the source) or a folder path "
                                       "of that name; with --images-only the output folder")
    s.add_argument("--neighbours", type=int, required=True, help="slices on each side (1 -> 3 channels per channel)")
    s.add_argument("--images-only", action="store_true",
                   help="stack a folder of images to predict (CASE_XXXX.nii.gz) instead of a dataset")
    s.add_argument("--slice-axis", type=int, choices=[0, 1, 2],
                   help="array axis (z, y, x order as nnU-Net reads) to stack along; default: nnU-Net's 2d slice "
                        "axis, the largest median spacing; give the dataset's with --images-only")
    s.set_defaults(handler=_cmd_stack_slices)

    e = sub.add_parser("env", help="print the nnUNet_extTrainer export line for stock nnUNetv2_* commands")
    e.set_defaults(handler=_cmd_env)

    d = sub.add_parser("demo", allow_abbrev=False, help="synthetic fundus dataset -> plan -> train a zoo model and nnU-Net's "
                                                             "U-Net briefly -> predict -> Dice, PNG, comparison",
                       description="Needs no data. By default nothing is downloaded: a small ViT trains from random "
                                   "weights on the CPU in minutes (it shows the pipeline, not what pretraining brings). "
                                   "--pretrained downloads a backbone's published weights and fine-tunes them the "
                                   "same way.")
    d.add_argument("--out", default="./demo_output", help="output folder (default ./demo_output)")
    d.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    d.add_argument("--iterations", type=int, default=25, help="iterations per epoch (default 25)")
    d.add_argument("--cases", type=int, default=24, help="training cases (default 24; 6 more are held out)")
    d.add_argument("--size", type=int, default=None,
                   help="image size in pixels (default 128; 256 with --pretrained, for the published ViTs' 16-pixel "
                        "patches)")
    d.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device (default cpu)")
    d.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    d.add_argument("--pretrained", action="store_true",
                   help="fine-tune a backbone's published weights (downloaded from the Hugging Face Hub) instead of "
                        "training a small ViT from scratch")
    d.add_argument("--model", default=None, help="with --pretrained: the zoo model to fine-tune, optionally "
                                                 "name.tag (default segformer_dinov3_small; `segzoo list --pretrained`)")
    d.set_defaults(handler=_cmd_demo)
    return parser


def _split_predict_args(argv: list[str]) -> tuple[list[str], list[str]]:
    ours, rest = [argv[0]], []
    items = iter(argv[1:])
    for item in items:
        if item in ("-tr", "-device"):
            ours += [item, next(items, "")]
        elif item == "--trust-checkpoint":
            ours.append(item)
        else:
            rest.append(item)
    return ours, rest


def _device(choice: str):
    import torch

    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("-device cuda: no CUDA device is available; use -device cpu")
    return torch.device(choice)


if __name__ == "__main__":
    sys.exit(main())
