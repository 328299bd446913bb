"""What rebuilds a zoo model, as one typed, serialisable record.

:func:`segzoo.create_model` attaches a :class:`ModelDescription` to every model it builds
(``model.description``). Whole-model folders (``config.json``) and LoRA adapter folders
(``adapter_config.json``) both write it with the same keys, and ``create_model(folder)``
reads either back through :meth:`ModelDescription.from_dict`, which also reads the
first format (``format_version`` 1) of both files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._version import __version__

__all__ = ["DESCRIPTION_KEYS", "ModelDescription", "WeightsRecord"]

# the keys a description occupies in config.json and adapter_config.json alike
DESCRIPTION_KEYS = ("architecture", "model_kwargs", "weights", "segzoo_version")


@dataclass(frozen=True)
class WeightsRecord:
    """Where a model's backbone weights came from when it was built.

    Not needed to rebuild the architecture, but an adapter folder holds no backbone
    weights: reloading it rebuilds the base from this record.
    """

    pretrained: bool = False  # the published weights of the model's tag were downloaded
    checkpoint_path: str | None = None  # or a local file (absolute), in its published layout
    hf_hub_id: str | None = None  # the Hub repo of the published weights, when pretrained

    @property
    def is_reproducible(self) -> bool:
        """Whether the weights can be loaded again (a random initialisation cannot)."""
        return self.pretrained or bool(self.checkpoint_path)


@dataclass
class ModelDescription:
    """A registered architecture, the ``create_model`` keywords that rebuild it, and its weights' origin.

    ``kwargs`` follows the model: ``reset_classifier`` updates ``num_classes``, LoRA adds or
    removes ``lora`` (``model.model_kwargs`` is this dict).
    """

    architecture: str  # registered name, without a pretrained tag
    kwargs: dict[str, Any] = field(default_factory=dict)  # num_classes, in_chans, pretrained_tag, lora, ...
    weights: WeightsRecord = field(default_factory=WeightsRecord)
    segzoo_version: str = __version__

    @property
    def pretrained_tag(self) -> str | None:
        return self.kwargs.get("pretrained_tag")

    @property
    def name(self) -> str:
        """``architecture.tag``: the name ``create_model`` takes."""
        return f"{self.architecture}.{self.pretrained_tag}" if self.pretrained_tag else self.architecture

    @property
    def lora(self) -> dict[str, Any] | None:
        return self.kwargs.get("lora")

    def rebuild_kwargs(self, lora: bool = True) -> dict[str, Any]:
        """``create_model(self.name, **rebuild_kwargs())``; ``lora=False`` leaves the adapters out."""
        skipped = {"pretrained_tag"} | (set() if lora else {"lora"})
        return {k: v for k, v in self.kwargs.items() if k not in skipped}

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "model_kwargs": dict(self.kwargs),
            "weights": {"pretrained": self.weights.pretrained, "checkpoint_path": self.weights.checkpoint_path,
                        "hf_hub_id": self.weights.hf_hub_id},
            "segzoo_version": self.segzoo_version,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelDescription":
        """Read the keys of :meth:`to_dict`, or those of the first format of either file."""
        if "weights" in data:
            weights = WeightsRecord(**{k: data["weights"].get(k) for k in ("checkpoint_path", "hf_hub_id")},
                                    pretrained=bool(data["weights"].get("pretrained")))
        else:  # format 1: adapters kept the origin under "base"; whole models did not need it
            base = data.get("base") or {}
            weights = WeightsRecord(pretrained=bool(base.get("pretrained")), checkpoint_path=base.get("checkpoint_path"),
                                    hf_hub_id=base.get("hf_hub_id"))
        architecture = data.get("architecture") or data.get("model_name")
        if not architecture:
            raise KeyError("architecture")
        kwargs = dict(data["model_kwargs"])
        if data.get("lora") and "lora" not in kwargs:  # format 1 adapters kept LoRA beside the kwargs
            kwargs["lora"] = dict(data["lora"])
        return cls(str(architecture), kwargs, weights, str(data.get("segzoo_version", "unknown")))
