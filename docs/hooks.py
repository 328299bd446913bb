"""mkdocs hook: pages and tables generated from the code at build time, so they cannot go stale.

``models.md`` is rendered from the registry and ``config.md`` from the bridge's config
dataclasses: whole pages, nothing in them written by hand. Hand-written pages pull in a
generated part with a marker line ``<!-- generated: module:function -->`` (e.g. the
weights table in ``weights.md``); an unknown marker fails the build.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = str(Path(__file__).resolve().parents[1])
GENERATED = {
    "models.md": "docs.registry_tables:render_model_table",
    "config.md": "docs.config_reference:render_config_reference",
}
MARKER = re.compile(r"^<!-- generated: ([\w.]+:\w+) -->$", re.M)


def on_files(files: Files, config) -> Files:
    for page, target in GENERATED.items():
        files.append(File.generated(config, page, content=_render(target)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    return MARKER.sub(lambda match: _render(match.group(1)), markdown)


def _render(target: str) -> str:
    if ROOT not in sys.path:  # building from a checkout without installing
        sys.path.insert(0, ROOT)
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)()
