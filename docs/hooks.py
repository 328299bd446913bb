"""mkdocs hook: pages generated from the code at build time, so they cannot go stale.

``models.md`` is rendered from the registry: a registered model cannot be missing from
the docs, and nothing in the table is written by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = str(Path(__file__).resolve().parents[1])
GENERATED = {"models.md": "segzoo.docs_gen:render_model_table"}


def on_files(files: Files, config) -> Files:
    import importlib

    if ROOT not in sys.path:  # building from a checkout without installing
        sys.path.insert(0, ROOT)
    for page, target in GENERATED.items():
        module_name, func_name = target.split(":")
        render = getattr(importlib.import_module(module_name), func_name)
        files.append(File.generated(config, page, content=render()))
    return files
