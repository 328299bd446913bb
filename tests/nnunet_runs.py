"""What the tests that run nnU-Net's commands share: a private nnU-Net environment and a
subprocess runner whose failure shows the command's output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def nnunet_env(base: Path, **extra: str) -> dict[str, str]:
    """This process's environment with nnU-Net's three folders under ``base``, one worker per pool,
    no compile, no Hub access and this checkout importable (``extra`` added last)."""
    env = dict(os.environ)
    env.update(
        nnUNet_raw=str(base / "raw"), nnUNet_preprocessed=str(base / "preprocessed"),
        nnUNet_results=str(base / "results"), nnUNet_def_n_proc="1", PYTHONPATH=str(ROOT),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", nnUNet_compile="f",
    )
    env.pop("nnUNet_extTrainer", None)
    env.update(extra)
    return env


def run(cmd: list[str], env: dict, expect_fail: bool = False) -> str:
    """Run ``cmd`` beside the nnU-Net folders; its stdout + stderr, asserting it succeeded (or failed)."""
    result = subprocess.run(cmd, env=env, cwd=env["nnUNet_raw"].rsplit("/", 1)[0], capture_output=True, text=True,
                            timeout=600)
    output = result.stdout + result.stderr
    if expect_fail:
        assert result.returncode != 0, f"expected {cmd} to fail:\n{output[-3000:]}"
    else:
        assert result.returncode == 0, f"{cmd} failed ({result.returncode}):\n{output[-6000:]}"
    return output


def bridge(args: list[str], env: dict, expect_fail: bool = False) -> str:
    """``segzoo-nnunet ARGS`` in a subprocess."""
    return run([sys.executable, "-m", "nnunet_bridge.cli", *args], env, expect_fail)


def refused_in_one_line(argv: list[str], capsys) -> str:
    """Run ``segzoo-nnunet ARGV`` in process; it must fail with one line on stderr and no traceback;
    return that line."""
    from nnunet_bridge.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]
