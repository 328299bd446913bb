"""Argument checks shared by the factories and heads: one wording for one mistake."""

from __future__ import annotations

import difflib
import inspect
import operator
from typing import Any, Callable, Iterable

__all__ = ["accepted_keywords", "did_you_mean", "one_weights_source", "positive_int", "reject_unknown_keywords"]

# create_model's own keywords, accepted by every registered model
CREATE_MODEL_KEYWORDS = ("pretrained", "num_classes", "in_chans", "checkpoint_path", "checkpoint_format", "lora")


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


def accepted_keywords(*functions: Callable[..., Any], skip: Iterable[str] = ()) -> list[str]:
    """The keyword parameters of ``functions`` (positional-only and ``**kwargs`` excluded)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    skipped = set(skip)
    names = [p.name for f in functions for p in inspect.signature(f).parameters.values()
             if p.kind in kinds and p.name not in skipped]
    return list(dict.fromkeys(names))


def reject_unknown_keywords(model_name: str, given: Iterable[str], accepted: Iterable[str]) -> None:
    """Raise a ``TypeError`` naming every keyword of ``given`` not in ``accepted``, the closest
    accepted one for each, and the full list, before any work is done."""
    accepted = sorted(set(accepted) | set(CREATE_MODEL_KEYWORDS))
    unknown = [k for k in given if k not in accepted]
    if not unknown:
        return
    guesses = [f"{key!r}{did_you_mean(key, accepted)}" for key in unknown]
    raise TypeError(
        f"create_model({model_name!r}) got unknown keyword argument{'s' if len(unknown) > 1 else ''} "
        f"{', '.join(guesses)}; {model_name} accepts: {', '.join(accepted)}"
    )


def did_you_mean(name: str, options: Iterable[str], cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options`` to a mistyped ``name``, else ``""``."""
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def one_weights_source(pretrained: bool, checkpoint_path: Any) -> None:
    """Published weights or a local file: asking for both is an error, not a silent choice."""
    if pretrained and checkpoint_path is not None:
        raise ValueError(
            "pass either pretrained=True (download the published weights) or checkpoint_path=... (a local file), not both"
        )
