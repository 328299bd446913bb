"""``segzoo`` command: list, inspect and export the zoo's models.

    segzoo list [PATTERN] [--pretrained]
    segzoo info NAME [--num-classes K]
    segzoo export NAME|FOLDER --onnx OUT.onnx [--img-size 512] [--dynamic-size] [--verbose]

``--help``, ``--version`` and ``list`` read the registry only (no torch, timm or peft import);
``info`` and ``export`` import what builds a model when they run.
"""

from __future__ import annotations

import argparse
import json
import sys

from ._registry import UnknownModelError, list_models, model_entrypoint
from ._version import __version__

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # a repository script, not part of an installed package
        print("segzoo: `segzoo bench` was removed: the benchmarks live in a source checkout; run "
              f"`python benchmarks/bench_models.py --models {argv[1] if len(argv) > 1 else 'NAME'}` there "
              "(or `make bench`)", file=sys.stderr)
        return 2
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UnknownModelError, ValueError) as err:
        print(f"segzoo: {err}", file=sys.stderr)
        return 2


def _list(args: argparse.Namespace) -> int:
    names = list_models(args.pattern or "", pretrained=args.pretrained)
    if not names:
        print(f"segzoo: no model matches {args.pattern!r}; try `segzoo list`", file=sys.stderr)
        return 1
    print("\n".join(names))
    return 0


def _info(args: argparse.Namespace) -> int:
    model_entrypoint(args.name)  # close-match error before any work
    from .summary import model_summary  # builds a model: torch and timm, for this command only

    summary = model_summary(args.name, args.num_classes)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    params = summary["params"]
    print(f"{summary['name']}: {summary['head']} head on {summary['backbone']} ({summary['encoder']})")
    if summary["feature_indices"] is not None:
        print(f"  patch size {summary['patch_size']}, feature blocks {summary['feature_indices']}, neck {summary['neck']}")
    else:  # a hierarchical encoder: its four stages are the features
        print(f"  hierarchical encoder: features from its 4 stages (first stride {summary['patch_size']}), no neck")
    print(
        f"  parameters: {params['total'] / 1e6:.1f}M (backbone {params['backbone'] / 1e6:.1f}M, "
        f"neck {params['neck'] / 1e6:.2f}M, head {params['decode_head'] / 1e6:.2f}M at {args.num_classes} classes)"
    )
    print(f"  pretrained tags: {', '.join(summary['pretrained_tags']) or 'none'}; licence: {summary['license']}")
    if summary["pretrained_cfg"]:
        cfg = summary["pretrained_cfg"]
        where = cfg["hf_hub_id"] or "not on the Hub: load the file with checkpoint_path=..."
        which = "tagged" if "." in args.name else "default"
        print(f"  {which} weights: {cfg['tag']} from {where}{' (gated)' if cfg['gated'] else ''}")
        print(f"  normalise with mean={cfg['mean']} std={cfg['std']}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ._factory import HF_HUB_PREFIX, _looks_like_path, create_model  # torch and timm, for this command only
    from .export import describe_onnx, export_onnx

    saved = args.name.startswith(HF_HUB_PREFIX) or _looks_like_path(args.name)
    if not saved:
        model_entrypoint(args.name)  # close-match error before any work
        if not args.num_classes:
            raise ValueError(f"{args.name} is a registered name (random weights): pass --num-classes K, the number "
                             "of classes, background included (a saved folder or hf-hub: id records its own)")
    if args.img_size and len(args.img_size) > 2:
        raise ValueError(f"--img-size takes one size (a square) or two (H W), got {len(args.img_size)} numbers")
    kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    model = create_model(args.name, **kwargs)
    img_size = _export_img_size(model, args)
    path = export_onnx(model, args.onnx, img_size=img_size, dynamic_size=args.dynamic_size, verbose=args.verbose)
    onnx_file = describe_onnx(path)
    (name, shape_in), (out, shape_out) = next(iter(onnx_file.inputs.items())), next(iter(onnx_file.outputs.items()))
    print(f"wrote {path} (input '{name}' {_shape(shape_in)} -> '{out}' {_shape(shape_out)}; "
          "checked against eager with ONNX Runtime)")
    for sidecar in onnx_file.files[1:]:  # only above ONNX's 2 GB protobuf limit
        print(f"wrote {sidecar} (the weights, over ONNX's 2 GB limit: {path.name} reads them from beside it, "
              "so copy both)")
    return 0


def _export_img_size(model: object, args: argparse.Namespace) -> int | tuple[int, int] | None:
    """``--img-size`` checked against the model in the command's words (export_onnx speaks Python)."""
    fixed = getattr(model, "fixed_input_size", None)
    size = None if not args.img_size else (args.img_size * 2)[:2]
    if args.dynamic_size and not getattr(getattr(model, "backbone", None), "dynamic_export", False):
        raise ValueError("--dynamic-size: only segformer_mit_* models export with dynamic height and width; the ViT "
                         "families fix their position-embedding (or RoPE) grid when traced, so export one file per "
                         "size (--img-size N)")
    if fixed is not None:
        if size is not None and tuple(size) != tuple(fixed):
            raise ValueError(f"{args.name} was built for {fixed[0]}x{fixed[1]} images: leave --img-size out or pass "
                             f"--img-size {fixed[0]} {fixed[1]}")
        return None
    if size is None:
        raise ValueError(f"{args.name} has no fixed input size: pass --img-size N (a square) or --img-size H W, the "
                         "size to trace it at" + (" (the smallest with --dynamic-size)" if args.dynamic_size else ""))
    low = int(getattr(model, "min_input_size", 1))
    if min(size) < low:
        raise ValueError(f"--img-size must be at least {low} px for {args.name}, got {' '.join(map(str, size))}")
    return size[0], size[1]


def _shape(dims: tuple) -> str:
    return f"({', '.join(str(d) for d in dims)})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segzoo", description="Segmentation models on ViT foundation backbones.")
    parser.add_argument("--version", action="version", version=f"segzoo {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("list", help="list registered models (shell wildcards)")
    p.add_argument("pattern", nargs="?", help="e.g. 'segformer_*' or '*dinov3*'")
    p.add_argument("--pretrained", action="store_true", help="list name.tag for every pretrained variant")
    p.set_defaults(func=_list)

    p = commands.add_parser("info", help="architecture summary, parameters, pretrained config")
    p.add_argument("name", help="registered name, optionally with a tag (segformer_dinov3_large.lvd1689m)")
    p.add_argument("--num-classes", type=int, default=2, help="classes for the parameter count (default 2)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_info)

    p = commands.add_parser("export", help="write a model as ONNX, checked against eager with ONNX Runtime")
    p.add_argument("name", help="a saved model (folder or hf-hub:org/name), or a registered name (random weights)")
    p.add_argument("--onnx", required=True, help="output file, e.g. model.onnx")
    p.add_argument("--img-size", type=int, nargs="+", help="traced size: H [W] (default: the model's fixed size)")
    p.add_argument("--dynamic-size", action="store_true", help="dynamic height and width (segformer_mit_* only)")
    p.add_argument("--num-classes", type=int, help="for a registered name: the number of classes")
    p.add_argument("--verbose", action="store_true", help="show the exporter's own progress notes and warnings")
    p.set_defaults(func=_export)
    return parser


if __name__ == "__main__":
    sys.exit(main())
