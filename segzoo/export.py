"""Export a zoo model to ONNX (through ``torch.export``), checked against eager.

Every per-pixel model exports (SegFormer, UperNet, DPT, MiT, and Mask2Former and EoMT in eval, whose
output is per-pixel log-probabilities): one ONNX file, input ``image`` ``(B, C, H, W)``,
output ``logits`` ``(B, num_classes, H, W)``. The batch is always dynamic. Height and width
are dynamic for MiT (a hierarchical CNN-like encoder: any size of at least 32 px); the ViT
families export at one size, because their position-embedding or RoPE grid is fixed when
the graph is traced (export one file per size). onnx, onnxscript and onnxruntime come with
the ``segzoo[export]`` extra and are imported only here, when an export is asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["check_onnx", "export_module_onnx", "export_onnx"]

_TOLERANCE = 1e-4  # fp32: ONNX Runtime vs eager, max abs difference of the logits


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    img_size: int | tuple[int, int] | None = None,
    dynamic_size: bool = False,
    check: bool = True,
) -> Path:
    """Write ``model`` as ONNX to ``path`` and return the path.

    Args:
        model: a zoo model (exported in eval mode; its mode is restored afterwards).
        img_size: the traced input size, ``512`` or ``(H, W)``; default: the size the model
            was built for (``create_model(..., img_size=...)``). Required otherwise.
        dynamic_size: H and W dynamic in the file, for backbones that allow it (MiT; the ViT
            families export one size).
        check: run the file with ONNX Runtime on a random input of two batch sizes and
            raise if the logits differ from eager by more than 1e-4.
    """
    size = _export_size(model, img_size)
    if dynamic_size and not getattr(getattr(model, "backbone", None), "dynamic_export", False):
        raise ValueError(
            "dynamic_size=True: only segformer_mit_* models export with dynamic height and width; the ViT families "
            "fix their position-embedding (or RoPE) grid when traced, so export one file per size (img_size=...)"
        )
    low = int(getattr(model, "min_input_size", 32)) if dynamic_size else None
    return export_module_onnx(model, path, (model.in_chans, *size), dynamic_min_size=low, check=check)


def export_module_onnx(module: nn.Module, path: str | os.PathLike, input_chw: tuple[int, int, int],
                       dynamic_min_size: int | None = None, check: bool = True) -> Path:
    """The export behind :func:`export_onnx`, for any module mapping one image batch to logits
    (e.g. the network nnU-Net runs): traced at ``input_chw``, dynamic batch, dynamic H/W from
    ``dynamic_min_size`` px when given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    try:
        dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=1024)}
        if dynamic_min_size is not None:
            dims.update({2: torch.export.Dim("height", min=dynamic_min_size, max=8192),
                         3: torch.export.Dim("width", min=dynamic_min_size, max=8192)})
        torch.onnx.export(module, (torch.randn(2, *input_chw),), str(path), dynamo=True, input_names=["image"],
                          output_names=["logits"], dynamic_shapes=(dims,), verbose=False)
        if check:
            check_onnx(module, path, input_chw[1:])
    finally:
        module.train(was_training)
    return path


def check_onnx(model: nn.Module, path: str | os.PathLike, img_size: tuple[int, int]) -> float:
    """Max abs difference between ONNX Runtime and eager (``model`` in eval mode, restored
    after) on random inputs of batch 1 and 3; raises ``AssertionError`` above 1e-4."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
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
