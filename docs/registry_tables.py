"""Documentation tables generated from the registry's entries (used by docs/hooks.py and the tests).

Every column is a field of an entry, its backbone spec or a pretrained config; nothing is cut
out of a model name.
"""

from __future__ import annotations

import re

from segzoo import BackboneSpec, list_models, model_entry
from segzoo.backbones import BACKBONES
from segzoo.summary import model_summary

__all__ = ["model_table_rows", "render_model_table", "render_weights_table", "weights_table_rows"]


def model_table_rows() -> list[dict]:
    """One row per registered model: name, head, backbone, patch, parameters, tags, licence."""
    rows = []
    for name in list_models():
        summary = model_summary(name, num_classes=2)
        rows.append(
            {
                "name": name,
                "head": summary["head"],
                "family": summary["family"],
                "size": summary["size"],
                "patch_size": summary["patch_size"],
                "params_m": summary["params"]["total"] / 1e6,
                "tags": summary["pretrained_tags"],
                "license": summary["license"] or "",
            }
        )
    return rows


def render_model_table() -> str:
    rows = model_table_rows()
    lines = [
        "# Models",
        "",
        f"All {len(rows)} registered models, generated from the registry at docs build time "
        "(`segzoo list`, `segzoo info NAME` print the same). Parameters are counted with 2 classes.",
        "",
        "| name | head | backbone | size | patch | params (M) | pretrained tags | licence of base weights |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tags = ", ".join(f"`{t}`" for t in r["tags"]) or "—"
        lines.append(
            f"| `{r['name']}` | {r['head']} | {r['family']} | {r['size']} | {r['patch_size']} | "
            f"{r['params_m']:.1f} | {tags} | {r['license']} |"
        )
    return "\n".join(lines) + "\n"


def weights_table_rows() -> list[dict]:
    """One row per published backbone weight set (backbone spec x tag); every head over a backbone shares them."""
    rows = []
    for spec in BACKBONES.values():
        example = _example_model(spec)
        for index, cfg in enumerate(spec.weights):
            rows.append({
                "default": index == 0,
                "family": spec.family,
                "size": spec.size,
                "tag": cfg.tag,
                "model": f"{example}.{cfg.tag}",
                "hf_hub_id": cfg.hf_hub_id,
                "hf_hub_filename": cfg.hf_hub_filename or ("model.safetensors" if cfg.hf_hub_id else None),
                "gated": cfg.gated,
                "timm_copy": bool(cfg.timm_tag),
                "checkpoint_format": cfg.checkpoint_format,
                "license": cfg.license_text,
                "source": cfg.source,
                "notes": cfg.notes,
            })
    return sorted(rows, key=lambda r: (r["family"], _SIZE_ORDER.get(r["size"], 9), r["size"], not r["default"]))


def _example_model(spec: BackboneSpec) -> str:
    """A registered model over ``spec``: SegFormer's (the head every kind takes) where there is one."""
    over_spec = [name for name in list_models() if model_entry(name).backbone is spec]
    return next((name for name in over_spec if model_entry(name).head.name == "segformer"), over_spec[0])


def render_weights_table() -> str:
    """Markdown: per backbone family, its licence and source, then where each weight set lives."""
    rows = weights_table_rows()
    lines = []
    for family in dict.fromkeys(r["family"] for r in rows):
        members = [r for r in rows if r["family"] == family]
        first = members[0]
        lines += [
            f"### {family}",
            "",
            f"Licence of the base weights: **{_autolink(first['license'])}**. Source: {_autolink(first['source'])}.",
            "",
            "| size | tag | where | access | file layout | notes |",
            "|---|---|---|---|---|---|",
        ]
        for r in members:
            lines.append(
                f"| {r['size']} | `{r['tag']}`{' (default)' if r['default'] else ''} | {_where(r)} | {_access(r)} | `{r['checkpoint_format']}` | {r['notes'] or ''} |"
            )
        lines.append("")
    return "\n".join(lines)


_SIZE_ORDER = {"small": 0, "base": 1, "large": 2, "giant": 3}


def _where(row: dict) -> str:
    if row["hf_hub_id"]:
        return f"Hub `{row['hf_hub_id']}` (`{row['hf_hub_filename']}`)"
    return "not on the Hub (release files, link above)"


def _access(row: dict) -> str:
    if row["hf_hub_id"] is None:
        return "download yourself; `checkpoint_path=`"
    if row["gated"]:
        return "gated: request access, log in; `pretrained=True`"
    if row["timm_copy"]:
        return "ungated timm copy; `pretrained=True`"
    return "ungated; `pretrained=True`"


def _autolink(text: str) -> str:
    """Bare URLs as markdown autolinks (strict mkdocs builds keep them clickable)."""
    return re.sub(r"(https?://[^\s;,)]+)", r"<\1>", text)
