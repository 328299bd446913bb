"""Model registry: one typed :class:`ModelEntry` per model name.

An entry says what a model is (its head, its backbone spec, its pretrained configs) so
that every consumer (the model summary, the docs tables, the model card, the nnU-Net
bridge's plans and config) reads fields instead of parsing names. The zoo's own entries
are generated from its head table and backbone specs (``segzoo/_catalog.py``); users
register theirs with :func:`register_model`, as in timm. This module imports no torch.
"""

from __future__ import annotations

import difflib
import fnmatch
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ._pretrained import PretrainedCfg
from ._validation import did_you_mean
from .backbones.specs import BackboneSpec, get_backbone_spec

if TYPE_CHECKING:
    from ._catalog import HeadSpec

__all__ = [
    "ModelEntry",
    "PretrainedCfg",
    "UnknownModelError",
    "get_pretrained_cfg",
    "is_model",
    "list_models",
    "list_pretrained",
    "model_entry",
    "model_entrypoint",
    "register_entry",
    "register_model",
    "register_pretrained_cfgs",
    "resolve_model_name",
    "split_model_name_tag",
]


class UnknownModelError(KeyError):
    """An unregistered model name; the message lists the closest registered names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass
class ModelEntry:
    """A registered model: its factory, and what it is made of where the registry knows it.

    ``head`` and ``backbone`` are set for every zoo model; a model registered by a user's
    plain ``@register_model`` function may leave them ``None`` (the built model then answers
    for itself). ``pretrained_cfgs`` maps tag -> config, the first tag being the default.
    """

    name: str
    entrypoint: Callable[..., Any]
    module: str  # the model file's name, for list_models(module=...)
    head: "HeadSpec | None" = None
    backbone: BackboneSpec | None = None
    pretrained_cfgs: dict[str, PretrainedCfg] = field(default_factory=dict)

    @property
    def default_cfg(self) -> PretrainedCfg | None:
        return next(iter(self.pretrained_cfgs.values()), None)

    def pretrained_cfg(self, tag: str | None = None) -> PretrainedCfg | None:
        """The config of ``tag`` (``None``: the default one, or ``None`` without any); an unknown tag raises."""
        if not tag:
            return self.default_cfg
        if tag not in self.pretrained_cfgs:
            cfgs = self.pretrained_cfgs
            valid = f"valid tags: {', '.join(cfgs)} (e.g. {next(iter(cfgs.values())).name!r})" if cfgs else \
                "it has no pretrained tags"
            raise UnknownModelError(
                f"Unknown pretrained tag {tag!r} for {self.name!r}{did_you_mean(tag, cfgs, cutoff=0.5)}; {valid}"
            )
        return self.pretrained_cfgs[tag]

    @property
    def supports_lora(self) -> bool | None:
        """Whether the backbone takes LoRA; ``None`` when the entry does not name its backbone."""
        return self.backbone.supports_lora if self.backbone is not None else None


_entries: dict[str, ModelEntry] = {}
_pending_cfgs: dict[str, dict[str, PretrainedCfg]] = {}  # configs registered before their model


def register_entry(entry: ModelEntry) -> ModelEntry:
    """Register one entry; a name is registered once."""
    if entry.name in _entries:
        raise ValueError(f"model {entry.name!r} is registered twice (second time in {entry.module})")
    entry.pretrained_cfgs.update(_pending_cfgs.pop(entry.name, {}))
    _entries[entry.name] = entry
    return entry


def register_model(fn: Callable[..., Any] | None = None, *, head: "HeadSpec | None" = None,
                   backbone: BackboneSpec | str | None = None) -> Any:
    """Decorator: register ``fn`` under its function name (timm's ``@register_model``).

    ``@register_model(backbone="dinov2_small")`` also records the backbone spec, so the
    registry can answer questions about the model (LoRA, weights) before building it.
    """
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        spec = get_backbone_spec(backbone) if isinstance(backbone, str) else backbone
        module_name = fn.__module__ or "__main__"  # None for code run through exec()
        entry = ModelEntry(fn.__name__, fn, module_name.split(".")[-1], head=head, backbone=spec)
        if spec is not None:  # the backbone's published weights serve this model too
            entry.pretrained_cfgs.update({cfg.tag: cfg.for_model(entry.name) for cfg in spec.weights})
        register_entry(entry)
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, "__all__") and fn.__name__ not in module.__all__:
            module.__all__.append(fn.__name__)
        return fn

    return register if fn is None else register(fn)


def register_pretrained_cfgs(cfgs: Iterable[PretrainedCfg]) -> None:
    """Register pretrained variants; the first tag registered for a model is its default."""
    for cfg in cfgs:
        if not cfg.architecture:
            raise ValueError(f"pretrained config {cfg.tag!r} names no model: register cfg.for_model(name)")
        entry = _entries.get(cfg.architecture)
        (entry.pretrained_cfgs if entry else _pending_cfgs.setdefault(cfg.architecture, {}))[cfg.tag] = cfg


def split_model_name_tag(name: str) -> tuple[str, str]:
    """``"segformer_dinov3_large.lvd1689m"`` -> ``("segformer_dinov3_large", "lvd1689m")``."""
    arch, _, tag = name.partition(".")
    return arch, tag


def model_entry(name: str) -> ModelEntry:
    """The entry of a registered name (a pretrained tag is ignored); unknown names raise
    :class:`UnknownModelError` listing the closest ones."""
    arch, _ = split_model_name_tag(name)
    if arch not in _entries:
        raise UnknownModelError(_unknown_message(arch, list(_entries), "model"))
    return _entries[arch]


def resolve_model_name(name: str, tag: str | None = None) -> tuple[ModelEntry, PretrainedCfg | None]:
    """``name[.tag]`` -> (entry, pretrained config): the one lookup every consumer starts from.
    ``tag`` (a ``pretrained_tag=`` keyword) applies when the name has none."""
    entry = model_entry(name)
    name_tag = split_model_name_tag(name)[1]
    if name_tag and tag and name_tag != tag:
        raise ValueError(f"{name!r} names tag {name_tag!r} but pretrained_tag={tag!r}; give one")
    return entry, entry.pretrained_cfg(name_tag or tag)


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
    entries = [e for e in _entries.values() if not module or e.module == module]
    if pretrained:
        names = [cfg.name for e in entries for cfg in e.pretrained_cfgs.values()]
    else:
        names = [e.name for e in entries]
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
    return arch in _entries and (not tag or tag in _entries[arch].pretrained_cfgs)


def model_entrypoint(name: str) -> Callable[..., Any]:
    """The factory function of a registered model; unknown names raise :class:`UnknownModelError`."""
    return model_entry(name).entrypoint


def get_pretrained_cfg(name: str, allow_missing: bool = False) -> PretrainedCfg | None:
    """Pretrained config of ``name`` or ``name.tag``; without a tag, the model's default one."""
    entry, cfg = resolve_model_name(name)
    if cfg is None and not allow_missing:
        raise ValueError(f"model {entry.name!r} has no pretrained weights registered; use checkpoint_path=...")
    return cfg


def _unknown_message(name: str, candidates: list[str], what: str) -> str:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.4)
    if not close:  # fall back to shared tokens, e.g. "segformer_dino_large"
        tokens = set(name.lower().replace(".", "_").split("_"))
        close = sorted(candidates, key=lambda c: -len(tokens & set(c.split("_"))))[:5]
    return f"Unknown {what} {name!r}. Closest registered: {', '.join(close)}. See segzoo.list_models()."
