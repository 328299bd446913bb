"""The benchmarks' ``--json FILE``: each result appended to FILE as one JSON line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def append_results(path: Path | None, *results: dict[str, Any]) -> None:
    """Append ``results`` to ``path`` (one JSON object per line); nothing without a path."""
    if path is None:
        return
    with Path(path).open("a") as f:
        for result in results:
            f.write(json.dumps(result) + "\n")
