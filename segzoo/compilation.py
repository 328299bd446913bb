"""``torch.compile`` for zoo models: regional by default, the whole graph on request.

Regional compilation compiles each repeated encoder block in place (every ViT block,
every MiT layer), then the neck and the head. The blocks share their code and shapes,
so dynamo traces one block and reuses the graph for the others: a ViT-L compiles about
as fast as a ViT-S, and most of the speed of a whole-graph compile remains (the blocks
hold nearly all FLOPs). Every input size works, but a new size can cost a recompile: see
``dynamic`` in :func:`compile_model` and ``benchmarks/compile_cost.py`` for what each costs.

Everything compiles *in place* (``nn.Module.compile``), never through a wrapper
(``torch.compile(model)``): parameters keep their names, so ``state_dict``,
``save_pretrained``, LoRA adapters and nnU-Net checkpoints have no ``_orig_mod.``
prefix, and the model can still be wrapped in DDP afterwards, as timm recommends.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterator

import torch
from torch import nn

__all__ = ["COMPILE_MODES", "compile_model", "is_compiled", "regional_parts", "repeated_blocks", "uncompile_model"]

COMPILE_MODES = ("regional", "whole")


def compile_model(model: nn.Module, mode: str = "regional", *, dynamic: bool | None = None,
                  **compile_kwargs: Any) -> nn.Module:
    """Compile a zoo model in place with ``torch.compile`` and return it.

    Args:
        model: a zoo model (:class:`segzoo.Segmenter` or one of its subclasses), with or
            without LoRA adapters, before any DDP wrapping.
        mode: ``"regional"`` (default) compiles each repeated backbone block, then the neck
            and the head; ``"whole"`` compiles the model as one graph, which needs a fixed
            input size (``create_model(..., img_size=512)``) to avoid recompiling for every
            new size, and takes much longer to compile. If the whole graph fails to compile
            at the first call, the model is compiled regionally instead, with one warning.
        dynamic: ``torch.compile``'s ``dynamic``, given to every compiled part. Each part
            compiles at its first call, then again for an input size its graphs do not cover:

            - ``None`` (torch's default): the first size compiles graphs for exactly that size;
              the second size recompiles every part with symbolic sizes, which later sizes reuse.
            - ``False``: a graph per part for every size; a part past dynamo's recompile limit
              (``torch._dynamo.config.recompile_limit``, 8) runs eager for any further size.
            - ``True``: symbolic sizes from the first call; new sizes reuse those graphs.

            With symbolic sizes, each branch on a size compiles the part concerned once more
            when a size first takes its other side: the feature pyramid pads an odd token grid,
            and torch lays out a small convolution's output differently (a ViT-S's neck
            recompiled at 96 and 128 px, then served every size from 160 px up).

            Sizes seen before reuse their graphs whatever the setting. To pay for one compile only,
            create the model for one size (``create_model(..., img_size=512)``, which refuses
            others), or pad inputs to a few sizes, or pass ``dynamic=True``. Measured costs
            (first call, each new size): ``docs/compile.md``, from ``benchmarks/compile_cost.py``.
        compile_kwargs: passed to ``torch.compile`` (``backend``, ``mode``, ``fullgraph``, ...);
            ``backend`` is a name (``"inductor"``, ``"aot_eager"``, ...) or a callable
            ``backend(gm, example_inputs)`` that returns the function to run, as ``torch.compile``
            takes it. Regional mode gives every part the same backend object, so that one
            graph serves all blocks (a new object per block would compile a graph per block).

    Gradient checkpointing (``set_grad_checkpointing``) and LoRA work before or after
    compiling; apply LoRA first when you can, so the adapters are traced from the start.
    Compilation happens at the first forward call; :func:`uncompile_model` undoes it.
    :func:`segzoo.compile_check.compile_counting` compiles regionally too, and counts how
    often each part's compiled graphs actually ran.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"mode must be one of {COMPILE_MODES}, got {mode!r}")
    _check_compilable(model)
    if mode == "whole":
        if getattr(model, "fixed_input_size", None) is None and getattr(model, "pad_multiple", 1) != 1:
            warnings.warn(
                "compiling a whole ViT model built for any input size: every new size recompiles; "
                "create it with img_size=... for one fixed size, or use mode='regional'",
                stacklevel=2,
            )
        _compile_whole_or_regional(model, {**compile_kwargs, "dynamic": dynamic})
        return model
    compile_kwargs["dynamic"] = dynamic
    for modules in regional_parts(model).values():
        for module in modules:
            module.compile(**compile_kwargs)
    return model


def regional_parts(model: nn.Module) -> dict[str, list[nn.Module]]:
    """What regional compilation compiles, by part: ``{"blocks": [...], "neck": [...], "head": [...]}``.

    Each module in the lists is compiled in place; a part with nothing to compile (a
    parameter-free neck such as ``IdentityNeck``, a backbone without repeated blocks) is left out.
    """
    parts = {"blocks": repeated_blocks(model.backbone)}
    for part, module in (("neck", getattr(model, "neck", None)), ("head", model.decode_head)):
        if module is not None and next(module.parameters(), None) is not None:  # nothing to compile in IdentityNeck
            parts[part] = [module]
    return {part: modules for part, modules in parts.items() if modules}


def repeated_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's repeated blocks: what regional compilation compiles one by one.

    A backbone names them itself through ``repeated_blocks()`` (the ViT's ``blocks``, the
    MiT's layers of every stage); a backbone without that method has none.
    """
    method = getattr(backbone, "repeated_blocks", None)
    return list(method()) if callable(method) else []


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` or any of its submodules was compiled in place."""
    return any(_compiled_in_place(m) for m in model.modules())


def uncompile_model(model: nn.Module) -> nn.Module:
    """Undo :func:`compile_model` (and any in-place ``module.compile()``): eager again."""
    for module in _compiled_modules(model):
        # nn.Module.compile stores the compiled callable here; there is no public undo
        module._compiled_call_impl = None
    return model


def _check_compilable(model: nn.Module) -> None:
    if not hasattr(model, "backbone") or not hasattr(model, "decode_head"):
        raise TypeError(
            f"compile_model expects a zoo model (backbone, neck, decode_head), got {type(model).__name__}; "
            "for other modules call torch.compile directly"
        )
    if is_compiled(model):
        raise ValueError("model is already compiled; call segzoo.uncompile_model(model) first to change the mode")


def _compile_whole_or_regional(model: nn.Module, compile_kwargs: dict[str, Any]) -> None:
    """``model.compile()``, except that a compiler failure at the first call recompiles regionally."""
    compiled: Callable[..., Any] = torch.compile(model._call_impl, **compile_kwargs)  # what nn.Module.compile does

    def first_call(*args: Any, **kwargs: Any) -> Any:
        try:
            output = compiled(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as err:
            warnings.warn(
                f"whole-model torch.compile failed, compiling regionally instead: {_describe(err)}", stacklevel=3
            )
            model._compiled_call_impl = None
            compile_model(model, "regional", **compile_kwargs)
            return model(*args, **kwargs)
        model._compiled_call_impl = compiled  # compiled: later calls skip this check
        return output

    model._compiled_call_impl = first_call


def _describe(err: Exception) -> str:
    message = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {message[0] if message else ''}"
    if "StrictLessThan" in str(err):
        # seen on torch 2.11 (CUDA) with a ViT and its feature pyramid in one graph
        text += " (inductor's known crash on a symbolic size condition, 'StrictLessThan' object has no attribute 'diff')"
    return text


def _compiled_in_place(module: nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def _compiled_modules(model: nn.Module) -> Iterator[nn.Module]:
    return (m for m in model.modules() if _compiled_in_place(m))
