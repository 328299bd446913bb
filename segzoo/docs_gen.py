"""Documentation generated from the registry (used by docs/hooks.py and tests)."""

from __future__ import annotations

import re

from ._registry import get_pretrained_cfg, list_models
from .summary import model_summary

__all__ = ["model_table_rows", "render_model_table", "render_weights_table", "weights_table_rows"]


def model_table_rows() -> list[dict]:
    """One row per registered model: name, head, backbone, patch, parameters, tags, licence."""
    rows = []
    for name in list_models():
        summary = model_summary(name, num_classes=2)
        backbone = summary["backbone"] or ""
        family, _, size = backbone.rpartition("_")
        rows.append(
            {
                "name": name,
                "head": summary["head"],
                "family": family,
                "size": size,
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
    """One row per published backbone weight set (backbone x tag), from the registry's pretrained configs.

    Every decoder over a backbone shares its weights, so rows are deduplicated by backbone and tag.
    """
    rows: dict[tuple[str, str], dict] = {}
    for name in list_models(pretrained=True):
        cfg = get_pretrained_cfg(name)
        backbone = cfg.backbone
        if (backbone, cfg.tag) in rows:
            continue
        family, _, size = backbone.rpartition("_")
        arch = name.partition(".")[0]
        rows[(backbone, cfg.tag)] = {
            "default": get_pretrained_cfg(arch).tag == cfg.tag,
            "family": family,
            "size": size,
            "tag": cfg.tag,
            "model": name,
            "hf_hub_id": cfg.hf_hub_id,
            "hf_hub_filename": cfg.hf_hub_filename or ("model.safetensors" if cfg.hf_hub_id else None),
            "gated": cfg.gated,
            "timm_copy": bool(cfg.timm_tag),
            "checkpoint_format": cfg.checkpoint_format,
            "license": cfg.license,
            "source": cfg.source,
            "notes": cfg.notes,
        }
    return sorted(rows.values(), key=lambda r: (r["family"], _SIZE_ORDER.get(r["size"], 9), r["size"], not r["default"]))


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
