"""Files the bridge writes: atomically, so a killed run never leaves a torn one."""

from __future__ import annotations

import os
from typing import Callable

__all__ = ["write_atomic"]


def write_atomic(path: str, write: Callable[[str], None] | bytes) -> None:
    """Write to a temporary file beside ``path``, then rename: a kill never leaves a torn file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        if isinstance(write, bytes):
            with open(tmp, "wb") as f:
                f.write(write)
        else:
            write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
