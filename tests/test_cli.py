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
    for command in (["--help"], ["list", "--help"], ["info", "--help"], ["export", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--verbose" in out and "--num-classes" in out  # export's flags, as its errors name them


def test_bench_is_a_repository_script_not_a_command(capsys):
    """An installed wheel has no benchmarks/ folder: the command says where the script is instead."""
    assert main(["bench", "segformer_dinov3_small"]) == 2
    err = capsys.readouterr().err
    assert "benchmarks/bench_models.py --models segformer_dinov3_small" in err and "make bench" in err


def test_bench_refuses_untimed_warmup():
    result = subprocess.run([sys.executable, "benchmarks/bench_models.py", "--warmup", "0"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--warmup and --steps must be >= 1" in result.stderr


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["list"], ["list", "eomt_*", "--pretrained"]])
def test_listing_commands_start_without_torch_timm_or_peft(argv):
    """--help, --version and list read the registry alone: no second-long import of torch, timm or peft."""
    code = ("import sys; from segzoo.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'timm', 'peft', 'transformers') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "HEAVY []" in result.stdout, result.stdout[-500:]
