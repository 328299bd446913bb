"""``segzoo`` command: list, inspect and export the zoo's models.

    segzoo list [PATTERN] [--pretrained]
    segzoo info NAME [--num-classes K]
    segzoo export NAME|FOLDER --onnx OUT.onnx [--img-size 512] [--dynamic-size]

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
    from ._factory import create_model  # torch, timm and the exporter, for this command only
    from .export import export_onnx

    kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    model = create_model(args.name, **kwargs)
    img_size = None  # --img-size H [W]: one side for a square
    if args.img_size:
        img_size = args.img_size[0] if len(args.img_size) == 1 else tuple(args.img_size)
    path = export_onnx(model, args.onnx, img_size=img_size, dynamic_size=args.dynamic_size)
    print(f"wrote {path} (input 'image' (B, {model.in_chans}, H, W) -> 'logits' (B, {model.num_classes}, H, W); "
          "checked against eager with ONNX Runtime)")
    return 0


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
    p.set_defaults(func=_export)
    return parser


if __name__ == "__main__":
    sys.exit(main())
