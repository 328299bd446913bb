"""Hand nnU-Net the bridge's trainer classes instead of letting it search for them by name.

nnU-Net finds a trainer by importing every module of its trainer folder and of each
``nnUNet_extTrainer`` folder, and around the external search it walks ``sys.modules``
reading each module's ``__file__``. In a process that already holds torch with CUDA,
transformers and timm, one of those reads can import another module, and the walk fails
with ``RuntimeError: dictionary changed size during iteration`` (seen with nnunetv2 2.8.1
and torch 2.11 on CUDA). The bridge knows its own classes, so ``segzoo-nnunet train``,
``predict`` and ``demo`` (its training and its in-process predictor) resolve them directly
(train also in each DDP process it or torchrun starts, :mod:`nnunet_bridge.distributed`);
any other name still goes to nnU-Net's search, retried after that one failure (the next
walk finds the modules the failed one imported). A name nnU-Net cannot find either is
:class:`UnknownTrainerError`, one line naming ``-tr``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Callable, Iterator

__all__ = ["UnknownTrainerError", "bridge_trainers_resolved", "find_trainer_class"]

_SEARCH_ATTEMPTS = 3
# the modules that bind nnU-Net's search by name at import: the training and the prediction entry points
_CALLERS = ("nnunetv2.run.run_training", "nnunetv2.inference.predict_from_raw_data")


class UnknownTrainerError(RuntimeError):
    """No trainer class of that name (a RuntimeError, as nnU-Net's own search raises)."""


def find_trainer_class(name: str, nnunet_search: Callable[[str], type] | None = None) -> type:
    """The trainer class called ``name``: a bridge trainer directly, any other through nnU-Net."""
    from . import trainer as bridge_trainers  # cycle: the trainer's DDP code looks trainers up through here

    candidate = getattr(bridge_trainers, name, None)
    if isinstance(candidate, type) and candidate.__module__.startswith("nnunet_bridge."):
        return candidate
    if nnunet_search is None:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as nnunet_search
    for attempt in range(_SEARCH_ATTEMPTS):
        try:
            return nnunet_search(name)
        except RuntimeError as err:
            if "Could not find requested nnunet trainer" in str(err):  # nnU-Net's wording for a name it lacks
                raise UnknownTrainerError(
                    f"no trainer class {name!r} in nnU-Net's trainer folder or nnUNet_extTrainer "
                    f"({os.environ.get('nnUNet_extTrainer', '')}); check -tr (the bridge's trainer is "
                    "nnUNetTrainerSegZoo)") from err
            if "changed size during iteration" not in str(err) or attempt == _SEARCH_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def bridge_trainers_resolved() -> Iterator[None]:
    """Within the block, nnU-Net's training and prediction entry points look trainers up
    with :func:`find_trainer_class`; nnU-Net's own lookup is restored afterwards."""
    modules = [importlib.import_module(name) for name in _CALLERS]
    originals = [module.recursive_find_trainer_class_by_name for module in modules]
    try:
        for module, original in zip(modules, originals):
            module.recursive_find_trainer_class_by_name = (
                lambda name, _search=original: find_trainer_class(name, _search))
        yield
    finally:
        for module, original in zip(modules, originals):
            module.recursive_find_trainer_class_by_name = original
