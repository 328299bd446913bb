"""The docs build without warnings, their model table comes from the registry, and their
Python examples run (a block preceded by an HTML comment starting `no-run` is skipped)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import segzoo
from segzoo.docs_gen import render_model_table

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!--\s*no-run[^>]*-->\s*\n)?```python\n(.*?)```", re.S)


def test_model_table_lists_every_registered_model():
    table = render_model_table()
    for name in segzoo.list_models():
        assert f"| `{name}` |" in table
    assert "`lvd1689m`, `sat493m`" in table


def test_docs_build_strict(tmp_path):
    # mkdocs is in the dev extra; run it with this interpreter so the same environment builds the docs
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "segformer_dinov3_large" in (tmp_path / "site" / "models" / "index.html").read_text()
    assert "train.initial_lr" in (tmp_path / "site" / "config" / "index.html").read_text()
    weights = (tmp_path / "site" / "weights" / "index.html").read_text()
    assert "YukunZhou/RETFound_mae_natureCFP" in weights and "generated:" not in weights  # marker replaced


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_doc_examples_run(page, capsys):
    blocks = [code for no_run, code in BLOCK.findall((DOCS / page).read_text()) if not no_run]
    if any("register_model" in code for code in blocks):
        # a page that registers models runs in its own interpreter: the registry is global
        result = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        return
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, f"{page} example", "exec"), namespace)


def test_weights_table_covers_every_published_weight_set():
    from segzoo.docs_gen import render_weights_table

    table = render_weights_table()
    for name in segzoo.list_models(pretrained=True):
        cfg = segzoo.get_pretrained_cfg(name)
        assert f"`{cfg.tag}`" in table
        if cfg.hf_hub_id:
            assert f"`{cfg.hf_hub_id}`" in table
    assert "gated: request access" in table and "`YukunZhou/RETFound_mae_natureCFP`" in table
    assert "not on the Hub" in table  # VisionFM: checkpoint_path only
    assert "<!-- generated:" in (DOCS / "weights.md").read_text()


def test_config_reference_lists_every_field_with_its_default_and_help():
    import dataclasses

    from nnunet_bridge.config import DEFAULT_CONFIG_PATH, SegZooNNUNetConfig
    from nnunet_bridge.docs_config import config_reference_rows, render_config_reference

    page = render_config_reference()
    rows = config_reference_rows()
    for section in dataclasses.fields(SegZooNNUNetConfig):
        for leaf in dataclasses.fields(section.default_factory()):
            key = f"{section.name}.{leaf.name}"
            assert f"| `{key}` |" in page, key
            assert leaf.metadata.get("help"), f"{key} has no help text in nnunet_bridge/config.py"
    assert {r["key"] for r in rows} >= {"model.name", "lora.r", "train.initial_lr"}
    assert "| `lora.target_modules` | list of str | `[qkv]` |" in page
    assert "| `train.batch_size` | int or null | `null` |" in page
    assert DEFAULT_CONFIG_PATH.read_text().strip() in page  # the shipped YAML, verbatim


def test_config_reference_needs_no_nnunetv2():
    # the docs (and segzoo users without the bridge's extra) must build without nnU-Net
    code = ("import sys; import nnunet_bridge.docs_config as d; d.render_config_reference(); "
            "assert not any(m.startswith('nnunetv2') for m in sys.modules), 'nnunetv2 imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
