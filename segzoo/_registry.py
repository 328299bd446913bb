"""Model registry: names -> factory functions, plus their pretrained configs.

Knows nothing about particular models (as in timm): model files register tiny
factory functions with :func:`register_model` and their pretrained variants with
:func:`register_pretrained_cfgs`.
"""

from __future__ import annotations

import difflib
import fnmatch
import sys
from typing import Any, Callable, Iterable

from ._pretrained import PretrainedCfg
from ._validation import did_you_mean

__all__ = [
    "PretrainedCfg",
    "UnknownModelError",
    "register_model",
    "register_pretrained_cfgs",
    "list_models",
    "list_pretrained",
    "is_model",
    "model_entrypoint",
    "get_pretrained_cfg",
    "split_model_name_tag",
]


class UnknownModelError(KeyError):
    """An unregistered model name; the message lists the closest registered names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


_model_entrypoints: dict[str, Callable[..., Any]] = {}
_model_modules: dict[str, str] = {}
_pretrained_cfgs: dict[str, dict[str, PretrainedCfg]] = {}  # arch -> tag -> cfg (first tag is default)


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: register ``fn`` under its function name."""
    name = fn.__name__
    if name in _model_entrypoints:
        raise ValueError(f"model {name!r} is registered twice (second time in {fn.__module__})")
    module_name = fn.__module__ or "__main__"  # None for code run through exec()
    _model_entrypoints[name] = fn
    _model_modules[name] = module_name.split(".")[-1]
    module = sys.modules.get(module_name)
    if module is not None and hasattr(module, "__all__") and name not in module.__all__:
        module.__all__.append(name)
    return fn


def register_pretrained_cfgs(cfgs: Iterable[PretrainedCfg]) -> None:
    """Register pretrained variants; the first tag registered for an architecture is its default."""
    for cfg in cfgs:
        if not cfg.architecture:
            raise ValueError(f"pretrained config {cfg.tag!r} names no model: register cfg.for_model(name)")
        _pretrained_cfgs.setdefault(cfg.architecture, {})[cfg.tag] = cfg


def split_model_name_tag(name: str) -> tuple[str, str]:
    """``"segformer_dinov3_large.lvd1689m"`` -> ``("segformer_dinov3_large", "lvd1689m")``."""
    arch, _, tag = name.partition(".")
    return arch, tag


def list_models(
    filter: str | Iterable[str] = "",
    pretrained: bool = False,
    exclude_filters: str | Iterable[str] = "",
    module: str = "",
) -> list[str]:
    """Registered model names matching shell-style wildcards, sorted.

    With ``pretrained=True`` the result lists one ``name.tag`` per pretrained variant
    (as :func:`timm.list_models` does), only for models that have one.
    """
    if pretrained:
        names = [cfg.name for arch in _model_entrypoints for cfg in _pretrained_cfgs.get(arch, {}).values()]
    else:
        names = list(_model_entrypoints)
    if module:
        names = [n for n in names if _model_modules[split_model_name_tag(n)[0]] == module]
    includes = [filter] if isinstance(filter, str) else list(filter)
    includes = [f for f in includes if f]
    if includes:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, f) for f in includes)]
    excludes = [exclude_filters] if isinstance(exclude_filters, str) else list(exclude_filters)
    for f in excludes:
        if f:
            names = [n for n in names if not fnmatch.fnmatchcase(n, f)]
    return sorted(set(names))


def list_pretrained(filter: str | Iterable[str] = "") -> list[str]:
    """``name.tag`` for every pretrained variant matching ``filter``."""
    return list_models(filter, pretrained=True)


def is_model(name: str) -> bool:
    """True if ``name`` (with or without a pretrained tag) is registered."""
    arch, tag = split_model_name_tag(name)
    return arch in _model_entrypoints and (not tag or tag in _pretrained_cfgs.get(arch, {}))


def model_entrypoint(name: str) -> Callable[..., Any]:
    """The factory function of a registered model; unknown names raise :class:`UnknownModelError`."""
    arch, _ = split_model_name_tag(name)
    if arch not in _model_entrypoints:
        raise UnknownModelError(_unknown_message(arch, list(_model_entrypoints), "model"))
    return _model_entrypoints[arch]


def get_pretrained_cfg(name: str, allow_missing: bool = False) -> PretrainedCfg | None:
    """Pretrained config of ``name`` or ``name.tag``; without a tag, the model's default one."""
    arch, tag = split_model_name_tag(name)
    model_entrypoint(arch)  # unknown model -> close-match error
    cfgs = _pretrained_cfgs.get(arch, {})
    if not cfgs:
        if allow_missing:
            return None
        raise ValueError(f"model {arch!r} has no pretrained weights registered; use checkpoint_path=...")
    if not tag:
        return next(iter(cfgs.values()))
    if tag not in cfgs:
        raise UnknownModelError(
            f"Unknown pretrained tag {tag!r} for {arch!r}{did_you_mean(tag, cfgs, cutoff=0.5)}; valid tags: "
            f"{', '.join(cfgs)} "
            f"(e.g. {next(iter(cfgs.values())).name!r})"
        )
    return cfgs[tag]


def _unknown_message(name: str, candidates: list[str], what: str) -> str:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.4)
    if not close:  # fall back to shared tokens, e.g. "segformer_dino_large"
        tokens = set(name.lower().replace(".", "_").split("_"))
        close = sorted(candidates, key=lambda c: -len(tokens & set(c.split("_"))))[:5]
    return f"Unknown {what} {name!r}. Closest registered: {', '.join(close)}. See segzoo.list_models()."
