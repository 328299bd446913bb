"""Documentation generated from the registry (used by docs/hooks.py and tests)."""

from __future__ import annotations

from ._registry import list_models
from .summary import model_summary

__all__ = ["model_table_rows", "render_model_table"]


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
