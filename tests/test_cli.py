import json
import subprocess
import sys
from pathlib import Path

import pytest

from segzoo.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_list_with_pattern_and_pretrained(capsys):
    assert main(["list", "segformer_dinov3_large*", "--pretrained"]) == 0
    assert capsys.readouterr().out.split() == ["segformer_dinov3_large.lvd1689m", "segformer_dinov3_large.sat493m"]
    assert main(["list", "nothing_like_this*"]) == 1


def test_info_reports_architecture_and_weights(capsys):
    assert main(["info", "segformer_dinov2_small", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["patch_size"] == 14 and info["backbone"] == "dinov2_small"
    assert info["feature_indices"] == [2, 5, 8, 11]
    assert info["params"]["backbone"] > 20e6 and info["pretrained_tags"] == ["lvd142m"]
    assert info["license"] == "apache-2.0"
    assert main(["info", "segformer_retfound_large"]) == 0
    out = capsys.readouterr().out
    assert "gated" in out and "cc-by-nc-4.0" in out


def test_info_on_a_hierarchical_encoder(capsys):
    assert main(["info", "segformer_mit_b2"]) == 0
    out = capsys.readouterr().out
    assert "(SegformerModel)" in out and "4 stages" in out and "None" not in out


def test_unknown_name_gets_close_matches(capsys):
    assert main(["info", "segformer_dinov_large"]) == 2
    assert "segformer_dinov3_large" in capsys.readouterr().err


def test_every_command_has_help(capsys):
    for command in (["--help"], ["list", "--help"], ["info", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        assert exit_info.value.code == 0
    capsys.readouterr()
    for command in (["bench", "--help"], ["bench", "segformer_dinov3_small", "-h"]):
        assert main(command) == 0
        out = capsys.readouterr().out
        assert "usage: segzoo bench NAME" in out  # and the benchmark's own options, not just NAME:
        assert "--img-size" in out and "--compile-modes" in out and "--measure" in out


def test_bench_refuses_untimed_warmup():
    result = subprocess.run([sys.executable, "benchmarks/bench_models.py", "--warmup", "0"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--warmup and --steps must be >= 1" in result.stderr
