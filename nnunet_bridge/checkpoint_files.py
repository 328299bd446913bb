"""Reading nnU-Net checkpoints without running code.

A checkpoint is a pickle, and unpickling can call any function the file names. Every file the
bridge reads (``predict``, ``export``, ``compare``, ``train --c``, ``-pretrained_weights``)
goes through :func:`load_checkpoint_file` or :func:`check_checkpoint_file`: ``torch.load`` with
``weights_only=True`` plus an allow-list of what nnU-Net checkpoints legitimately hold beyond
tensors, containers and numbers (numpy scalars and their dtypes, in nnU-Net's logs; the plans
are plain JSON data). A file that needs anything else is refused, naming the offending globals
and ``--trust-checkpoint``, the flag that loads a trusted file as nnU-Net does
(``weights_only=False``).
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
import torch

from segzoo import CheckpointError, UnsafeCheckpointError

__all__ = ["TRUST_ENV", "check_checkpoint_file", "load_checkpoint_file", "plain_numbers", "trusted_by_environment"]

# ``segzoo-nnunet train --trust-checkpoint`` sets it: the trainer nnU-Net builds (in each process
# of a multi-GPU run) reads its checkpoints there; stock nnUNetv2_train with the bridge trainer too
TRUST_ENV = "SEGZOO_TRUST_CHECKPOINT"


def _numpy_globals() -> list[Any]:
    """numpy scalars (``np.float64`` in nnU-Net's logs and ``_best_ema``) pickle as
    ``multiarray.scalar(dtype, bytes)``: rebuilding one runs no code. Files written with numpy 1
    name the module ``numpy.core``, numpy 2 ``numpy._core``; both spellings are accepted."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list[Any] = [np.dtype, multiarray.scalar, (multiarray.scalar, "numpy.core.multiarray.scalar"),
                          (multiarray.scalar, "numpy._core.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles a dtype through its class
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


_ALLOWED = _numpy_globals()
_ALLOWED_NAMES = {name for g in _ALLOWED for name in (
    [g[1]] if isinstance(g, tuple) else [f"{g.__module__}.{g.__qualname__}"])}


def trusted_by_environment() -> bool:
    """Whether ``--trust-checkpoint`` was given to the command that started this training process."""
    return os.environ.get(TRUST_ENV, "") not in ("", "0")


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu", *, trusted: bool = False,
                         mmap: bool = False) -> dict[str, Any]:
    """``torch.load`` of an nnU-Net checkpoint that cannot run code; ``trusted`` loads it as nnU-Net
    does (``weights_only=False``, for a file whose origin you trust that needs more)."""
    if trusted:
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    try:
        with torch.serialization.safe_globals(_ALLOWED):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        # the weights-only unpickler stops at the first global it does not allow: nothing has run
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise _refusal(path, unsafe) from err
        raise _unreadable(path, err) from err


def check_checkpoint_file(path: str | os.PathLike, *, trusted: bool = False) -> None:
    """Refuse ``path`` as :func:`load_checkpoint_file` would, without loading its tensors: for
    files handed to nnU-Net, which loads them with ``weights_only=False``."""
    if trusted:
        return
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as err:  # noqa: BLE001 - zip and pickle readers raise many types on damaged files
        raise _unreadable(path, err) from err
    unsafe = sorted(n for n in names if n not in _ALLOWED_NAMES)  # torch returns them unordered
    if unsafe:
        raise _refusal(path, unsafe)


def plain_numbers(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers (in lists, tuples and dicts), so a
    checkpoint holding it loads with plain ``torch.load(weights_only=True)``."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: plain_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_numbers(v) for v in value)
    return value


def _unsafe_globals(path: str | os.PathLike) -> list[str]:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - a damaged file: not evidence of unsafe content
        return []
    return sorted(n for n in names if n not in _ALLOWED_NAMES)  # torch returns them unordered


def _refusal(path: str | os.PathLike, unsafe: list[str]) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"refused to load checkpoint {str(path)!r}: its pickle needs {', '.join(unsafe)}, which an nnU-Net "
        "checkpoint (weights, numbers, numpy scalars, the plans) never needs, and unpickling it could run code. "
        "Only if you trust the file's origin: pass --trust-checkpoint to the segzoo-nnunet command "
        f"(or set {TRUST_ENV}=1 for nnUNetv2_train with the bridge trainer) to load it as nnU-Net does"
    )


def _unreadable(path: str | os.PathLike, err: Exception) -> CheckpointError:
    first = str(err).splitlines()[0] if str(err) else ""
    return CheckpointError(f"could not read checkpoint {str(path)!r}: the file is truncated, corrupted or not a "
                           f"PyTorch checkpoint ({type(err).__name__}: {first}); copy it again or train again")
