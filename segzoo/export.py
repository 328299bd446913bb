"""Export a zoo model to ONNX (through ``torch.export``), checked against eager.

Every per-pixel model exports (SegFormer, UperNet, DPT, MiT, and Mask2Former and EoMT in eval, whose
output is per-pixel log-probabilities): one self-contained ONNX file (weights inside), input
``image`` ``(B, C, H, W)``, output ``logits`` ``(B, num_classes, H, W)``. Only weights beyond
ONNX's 2 GB protobuf limit go to a sidecar ``<file>.onnx.data`` beside it (:func:`describe_onnx`
lists a file's parts). The batch is always dynamic. Height and width
are dynamic for MiT (a hierarchical CNN-like encoder: any size of at least 32 px); the ViT
families export at one size, because their position-embedding or RoPE grid is fixed when
the graph is traced (export one file per size). onnx, onnxscript and onnxruntime come with
the ``segzoo[export]`` extra and are imported only here, when an export is asked for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["OnnxDescription", "check_onnx", "describe_onnx", "export_module_onnx", "export_onnx"]

_TOLERANCE = 1e-4  # fp32: ONNX Runtime vs eager, max abs difference of the logits
# protobuf refuses messages of 2 GiB or more; the graph beside the weights needs room too
_EMBED_LIMIT = 2**31 - 2**26
# where the exporter's progress notes come from (e.g. onnxscript's "Skipping constant folding for op Split")
_CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export", "torch._dynamo",
                   "torch.fx.experimental.symbolic_shapes")
_CHATTY_WARNINGS = r"(torch\.onnx|torch\.export|torch\._export|onnxscript|onnx_ir|onnx)(\.|$)"
_DIM_LETTERS = {"batch": "B", "height": "H", "width": "W"}


@dataclass
class OnnxDescription:
    """What an ONNX file is made of: its ``files`` (the ``.onnx`` first, then any external-data
    sidecar it names) and the shapes of its inputs and outputs (``"B"``, ``"H"``, ``"W"`` where dynamic)."""

    files: list[Path]
    inputs: dict[str, tuple[int | str, ...]] = field(default_factory=dict)
    outputs: dict[str, tuple[int | str, ...]] = field(default_factory=dict)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    img_size: int | tuple[int, int] | None = None,
    dynamic_size: bool = False,
    check: bool = True,
    verbose: bool = False,
) -> Path:
    """Write ``model`` as ONNX to ``path`` and return the path.

    The weights are inside the file unless they exceed ONNX's 2 GB limit; then they go to
    ``path`` + ``.data`` beside it (:func:`describe_onnx` lists the files to copy).

    Args:
        model: a zoo model (exported in eval mode; its mode is restored afterwards).
        img_size: the traced input size, ``512`` or ``(H, W)``; default: the size the model
            was built for (``create_model(..., img_size=...)``). Required otherwise.
        dynamic_size: H and W dynamic in the file, for backbones that allow it (MiT; the ViT
            families export one size).
        check: run the file with ONNX Runtime on a random input of two batch sizes and
            raise if the logits differ from eager by more than 1e-4.
        verbose: let torch's exporter, onnxscript and ONNX Runtime print their progress notes
            and warnings (silenced by default).
    """
    size = _export_size(model, img_size)
    if dynamic_size and not getattr(getattr(model, "backbone", None), "dynamic_export", False):
        raise ValueError(
            "dynamic_size=True: only segformer_mit_* models export with dynamic height and width; the ViT families "
            "fix their position-embedding (or RoPE) grid when traced, so export one file per size (img_size=...)"
        )
    low = int(getattr(model, "min_input_size", 32)) if dynamic_size else None
    return export_module_onnx(model, path, (model.in_chans, *size), dynamic_min_size=low, check=check,
                              verbose=verbose)


def export_module_onnx(module: nn.Module, path: str | os.PathLike, input_chw: tuple[int, int, int],
                       dynamic_min_size: int | None = None, check: bool = True, verbose: bool = False) -> Path:
    """The export behind :func:`export_onnx`, for any module mapping one image batch to logits
    (e.g. the network nnU-Net runs): traced at ``input_chw``, dynamic batch, dynamic H/W from
    ``dynamic_min_size`` px when given; one self-contained file below ONNX's 2 GB limit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    try:
        dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=1024)}
        if dynamic_min_size is not None:
            dims.update({2: torch.export.Dim("height", min=dynamic_min_size, max=8192),
                         3: torch.export.Dim("width", min=dynamic_min_size, max=8192)})
        with _exporter_output(verbose):
            # no file argument: torch would move weights over 1.5 GB to a sidecar; _save keeps them in up to 2 GB
            program = torch.onnx.export(module, (torch.randn(2, *input_chw),), dynamo=True, input_names=["image"],
                                        output_names=["logits"], dynamic_shapes=(dims,), verbose=verbose)
            _save(program.model, path)
        if check:
            check_onnx(module, path, input_chw[1:], verbose=verbose)
    finally:
        module.train(was_training)
    return path


def describe_onnx(path: str | os.PathLike) -> OnnxDescription:
    """The files that make up the ONNX model at ``path`` (itself, then the external-data files it
    names: copy them all to deploy it) and its input and output shapes."""
    import onnx

    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    sidecars: list[Path] = []
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next(e.value for e in tensor.external_data if e.key == "location")
            if path.parent / location not in sidecars:
                sidecars.append(path.parent / location)

    def shapes(values: Any) -> dict[str, tuple[int | str, ...]]:
        return {v.name: tuple(d.dim_value if d.HasField("dim_value") else _DIM_LETTERS.get(d.dim_param, d.dim_param)
                              for d in v.type.tensor_type.shape.dim) for v in values}

    return OnnxDescription([path, *sidecars], shapes(proto.graph.input), shapes(proto.graph.output))


def check_onnx(model: nn.Module, path: str | os.PathLike, img_size: tuple[int, int], verbose: bool = False) -> float:
    """Max abs difference between ONNX Runtime and eager (``model`` in eval mode, restored
    after) on random inputs of batch 1 and 3; raises ``AssertionError`` above 1e-4."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if not verbose:  # errors only: no notes about the initializers its optimiser prunes
        options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    channels = session.get_inputs()[0].shape[1]
    was_training, worst = model.training, 0.0
    model.eval()
    try:
        for batch in (1, 3):
            x = torch.randn(batch, channels, *img_size)
            with torch.no_grad():
                want = model(x)
            got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
            worst = max(worst, float((got - want).abs().max()))
    finally:
        model.train(was_training)
    if worst > _TOLERANCE:
        raise AssertionError(f"{path}: ONNX Runtime differs from eager by {worst:.2e} (> {_TOLERANCE:.0e})")
    return worst


def _save(model: Any, path: Path) -> None:
    """One file when the weights fit ONNX's protobuf limit, else the weights in ``path`` + ``.data``."""
    import onnx_ir  # the exporter's model class (onnxscript depends on it)

    weights = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    if weights < _EMBED_LIMIT:
        onnx_ir.save(model, path)
    else:
        onnx_ir.save(model, path, external_data=f"{path.name}.data")


@contextlib.contextmanager
def _exporter_output(verbose: bool) -> Iterator[None]:
    """The exporter's logs and warnings, silenced unless ``verbose``: notes about the graph
    (constant folding skipped, ops decomposed) that no user acts on."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=_CHATTY_WARNINGS)  # the model's own warnings still show
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _export_size(model: nn.Module, img_size: int | tuple[int, int] | None) -> tuple[int, int]:
    if not hasattr(model, "backbone") or not hasattr(model, "in_chans"):
        raise TypeError(f"export_onnx expects a zoo model (segzoo.create_model), got {type(model).__name__}")
    size = img_size if img_size is not None else getattr(model, "fixed_input_size", None)
    if size is None:
        raise ValueError("pass img_size=... (e.g. 512 or (512, 768)): the size to trace the model at; or build the "
                         "model with create_model(..., img_size=...)")
    size = (size, size) if isinstance(size, int) else tuple(size)
    fixed = getattr(model, "fixed_input_size", None)
    if fixed is not None and tuple(fixed) != size:
        raise ValueError(f"the model was built for img_size={tuple(fixed)}; export it at that size, got {size}")
    low = int(getattr(model, "min_input_size", 1))
    if len(size) != 2 or min(size) < low:
        raise ValueError(f"img_size must be (H, W) of at least {low} px, got {img_size!r}")
    return int(size[0]), int(size[1])
