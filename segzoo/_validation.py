"""Argument checks shared by the factories and heads: one wording for one mistake."""

from __future__ import annotations

import operator
from typing import Any

__all__ = ["positive_int"]


def positive_int(name: str, value: Any, meaning: str = "") -> int:
    """``value`` as an ``int >= 1``, else a ``ValueError`` naming ``name`` and what it means.

    Integer-likes are accepted (``numpy.int64``, 0-d integer tensors: anything
    ``operator.index`` takes); ``bool`` and floats are not.
    """
    hint = f" ({meaning})" if meaning else ""
    if value is None:
        raise ValueError(f"{name} is required: pass {name}=K{hint}")
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < 1:
        raise ValueError(f"{name} must be an integer >= 1{hint}, got {value!r}")
    return number
