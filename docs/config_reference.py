"""The configuration reference page, generated from the bridge's config dataclasses (docs/hooks.py).

Every field's name, type, default and help come from :mod:`nnunet_bridge.config`, and the
defaults template is :func:`~nnunet_bridge.config.default_config_yaml`, so the page cannot drift
from what :func:`~nnunet_bridge.config.load_config` accepts. The head widths are read from the
head factories' signatures. Needs no nnunetv2.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

import segzoo

from nnunet_bridge.config import DEFAULT_CONFIG_PATH, SegZooNNUNetConfig, _yaml_value, default_config_yaml

__all__ = ["config_reference_rows", "head_widths", "render_config_reference"]


def config_reference_rows() -> list[dict[str, str]]:
    """One row per leaf field: dotted ``key``, ``type``, ``default`` (as YAML writes it) and ``help``."""
    rows, defaults = [], SegZooNNUNetConfig()
    for section in dataclasses.fields(SegZooNNUNetConfig):
        values = getattr(defaults, section.name)
        hints = typing.get_type_hints(type(values))
        for leaf in dataclasses.fields(values):
            rows.append({"section": section.name, "key": f"{section.name}.{leaf.name}",
                         "type": _type_name(hints[leaf.name]), "default": _yaml_value(getattr(values, leaf.name)),
                         "help": leaf.metadata.get("help", "")})
    return rows


def head_widths() -> dict[str, int]:
    """Head title -> its ``decoder_hidden_size`` default, from its factory in ``segzoo.heads`` (if it has one)."""
    widths = {}
    for head in segzoo.list_heads():
        factory = getattr(segzoo.heads, f"create_{head.name}_head", None)  # segzoo.heads loads torch
        parameter = inspect.signature(factory).parameters.get("decoder_hidden_size") if factory else None
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            widths[head.title] = parameter.default
    return widths


def render_config_reference() -> str:
    """Markdown of the whole reference page."""
    widths = ", ".join(f"{title} {width}" for title, width in head_widths().items())
    lines = [
        "# Configuration reference",
        "",
        "The nnU-Net bridge reads one configuration with three sections, `model`, `lora` and `train` "
        "(OmegaConf structured dataclasses in `nnunet_bridge/config.py`, the one place the defaults are set; "
        "this page is generated from them when the docs are built). A run's configuration is, later ones "
        "winning: the defaults below, the configuration `segzoo-nnunet plan` stored in the dataset's plans, "
        "and the YAML given with `--config`. Your YAML holds only the keys it changes; an unknown key or a "
        "wrong type is an error naming the key and the file.",
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
    rows = config_reference_rows()
    for section in dataclasses.fields(SegZooNNUNetConfig):
        lines += [
            f"## `{section.name}`",
            "",
            (section.default_factory().__doc__ or section.metadata["help"]).strip(),  # type: ignore[misc]
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
        ]
        lines += [f"| `{row['key']}` | {row['type']} | `{row['default']}` | {_cell(row['help'])} |"
                  for row in rows if row["section"] == section.name]
        lines.append("")
        if section.name == "model" and widths:
            lines += [f"With `model.decoder_hidden_size: null` each head keeps its own width: {widths} "
                      "(the defaults of the head factories in `segzoo.heads`).", ""]
    lines += [
        "## The defaults as a YAML template",
        "",
        f"`nnunet_bridge/configs/{DEFAULT_CONFIG_PATH.name}` in the installed package holds the same defaults "
        "with their help, generated from the dataclasses: copy it, keep the keys you change, pass it with "
        "`--config`.",
        "",
        "```yaml",
        default_config_yaml().rstrip("\n"),
        "```",
        "",
    ]
    return "\n".join(lines)


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return f"{' or '.join(_type_name(a) for a in inner)} or null"
    if origin in (list, typing.List):
        return f"list of {_type_name(args[0])}" if args else "list"
    return getattr(hint, "__name__", str(hint))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
