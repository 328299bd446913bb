"""Wheels of what the GPU suite needs that a bare GPU machine lacks (nnunetv2, omegaconf, ...).

A bare GPU machine has torch, timm, transformers, peft, numpy, scipy, scikit-image,
pandas and matplotlib, but not nnunetv2 and what it alone needs; nothing can be
downloaded there. This fetches those wheels for the machine's Python (3.12, x86-64
Linux) into a folder, builds the ones PyPI has only as source, and re-compresses each
wheel with LZMA (a valid wheel: pip reads any zip method) so that all of them, SimpleITK
included, travel in about 45 MB. The suite installs them with
``pip install --no-index --no-deps --target``.

    python benchmarks/gpu_wheels.py .gpu_wheels         # what `make gpu-wheels` runs
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# the versions the test suite runs with; only what nnunetv2 and the bridge import at run time
BINARY_WHEELS = [
    "nnunetv2==2.8.1", "batchgenerators==0.25.5", "batchgeneratorsv2==0.3.6",
    "dynamic-network-architectures==0.4.4", "SimpleITK==2.5.7", "blosc2==4.14.1", "ndindex==1.10.1",
    "numexpr==2.14.2", "connected-components-3d==4.1.1", "nibabel==5.4.2", "omegaconf==2.4.0",
]
SOURCE_ONLY = ["acvl-utils==0.2.6", "antlr4-python3-runtime==4.9.3"]  # pure Python, built here
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "any"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--python-version", default="3.12")
    args = parser.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    platform_flags = [flag for name in PLATFORMS for flag in ("--platform", name)]
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", args.python_version,
                    "--implementation", "cp", *platform_flags, "-d", str(args.folder), *BINARY_WHEELS], check=True)
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(args.folder), *SOURCE_ONLY], check=True)
    for wheel in sorted(args.folder.glob("*.whl")):
        before = wheel.stat().st_size
        recompress(wheel)
        print(f"{wheel.name}: {before / 1e6:.1f} MB -> {wheel.stat().st_size / 1e6:.1f} MB", flush=True)
    total = sum(w.stat().st_size for w in args.folder.glob("*.whl"))
    print(f"{len(list(args.folder.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB in {args.folder}")


def recompress(wheel: Path) -> None:
    """Rewrite ``wheel`` with LZMA-compressed members (same names, same contents, same RECORD)."""
    with zipfile.ZipFile(wheel) as source:
        if all(info.compress_type == zipfile.ZIP_LZMA for info in source.infolist()):
            return
        with tempfile.NamedTemporaryFile(dir=wheel.parent, suffix=".tmp", delete=False) as tmp:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_LZMA) as target:
                for info in source.infolist():
                    target.writestr(info, source.read(info), compress_type=zipfile.ZIP_LZMA)
    Path(tmp.name).chmod(0o644)
    Path(tmp.name).replace(wheel)


if __name__ == "__main__":
    main()
