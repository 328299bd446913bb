"""The configuration reference page, generated from the config dataclasses (docs/hooks.py).

Every field's name, type, default and ``help`` come from :mod:`nnunet_bridge.config`,
and the shipped default YAML is included verbatim, so the reference cannot drift from
what :func:`~nnunet_bridge.config.load_config` accepts. Needs only omegaconf (no nnunetv2).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from .config import DEFAULT_CONFIG_PATH, SegZooNNUNetConfig

__all__ = ["config_reference_rows", "render_config_reference"]


def config_reference_rows() -> list[dict[str, str]]:
    """One row per leaf field: dotted ``key``, ``type``, ``default`` (as YAML writes it) and ``help``."""
    rows = []
    for section in dataclasses.fields(SegZooNNUNetConfig):
        section_cls = _default_of(section).__class__
        hints = typing.get_type_hints(section_cls)
        for leaf in dataclasses.fields(section_cls):
            rows.append(
                {
                    "section": section.name,
                    "key": f"{section.name}.{leaf.name}",
                    "type": _type_name(hints[leaf.name]),
                    "default": _yaml_value(_default_of(leaf)),
                    "help": leaf.metadata.get("help", ""),
                }
            )
    return rows


def render_config_reference() -> str:
    """Markdown of the whole reference page."""
    lines = [
        "# Configuration reference",
        "",
        "The nnU-Net bridge reads one configuration with three sections, `model`, `lora` and `train` "
        "(OmegaConf structured dataclasses in `nnunet_bridge/config.py`; this page is generated from them "
        "when the docs are built). A run's configuration is, later ones winning: the shipped defaults below, "
        "the configuration `segzoo-nnunet plan` stored in the dataset's plans, and the YAML given with "
        "`--config`. Your YAML holds only the keys it changes; an unknown key or a wrong type is an error "
        "naming the key and the file.",
        "",
        "At training time `--config` may change the `train` section only: `model` and `lora` (and the patch "
        "size) are fixed when a configuration is planned, because nnU-Net rebuilds the network from the plans "
        "at inference. To try another model or LoRA setting, plan it under a new name "
        "(`segzoo-nnunet plan ID --config other.yaml --name 2d_my_variant`).",
        "",
        "The resolved configuration of a run is written to `segzoo_config.yaml` in its output folder and into "
        "every checkpoint.",
        "",
    ]
    docs = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(SegZooNNUNetConfig)}
    rows = config_reference_rows()
    for section in dict.fromkeys(r["section"] for r in rows):
        section_cls = _default_of(next(f for f in dataclasses.fields(SegZooNNUNetConfig) if f.name == section))
        lines += [
            f"## `{section}`",
            "",
            f"{(section_cls.__doc__ or docs[section]).strip()}",
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
        ]
        for row in rows:
            if row["section"] == section:
                lines.append(f"| `{row['key']}` | {row['type']} | `{row['default']}` | {_cell(row['help'])} |")
        lines.append("")
    lines += [
        "## The shipped defaults",
        "",
        f"`nnunet_bridge/configs/{DEFAULT_CONFIG_PATH.name}`, merged first into every configuration:",
        "",
        "```yaml",
        DEFAULT_CONFIG_PATH.read_text().rstrip("\n"),
        "```",
        "",
    ]
    return "\n".join(lines)


# -- helpers ---------------------------------------------------------------------------


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    raise ValueError(f"configuration field {f.name!r} has no default")


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return f"{' or '.join(_type_name(a) for a in inner)} or null"
    if origin in (list, typing.List):
        return f"list of {_type_name(args[0])}" if args else "list"
    return getattr(hint, "__name__", str(hint))


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"' if value == "" else value
    if isinstance(value, list):  # YAML flow style, as default.yaml writes lists
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
