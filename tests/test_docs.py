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


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_doc_examples_run(page, capsys):
    namespace: dict = {}
    for no_run, code in BLOCK.findall((DOCS / page).read_text()):
        if not no_run:
            exec(compile(code, f"{page} example", "exec"), namespace)
