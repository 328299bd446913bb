"""The docs build without warnings, their model table comes from the registry, and their
Python examples run (a block preceded by an HTML comment starting `no-run` is skipped) and
print what their `# prints:` comments say."""

import ast
import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

import segzoo
from docs.registry_tables import render_model_table

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!--\s*no-run[^>]*-->\s*\n)?```python\n(.*?)```", re.S)
# `# prints: TEXT` at the start of a line, continued on the next `#` lines indented further
PRINTS = re.compile(r"^# prints:(.*(?:\n#[ \t]{2,}\S.*)*)", re.M)


def _runnable_blocks(path: Path) -> list[tuple[int, str]]:
    """(line of the block's first code line in the file, code) of each block that runs."""
    text = path.read_text()
    return [(text.count("\n", 0, match.start(2)) + 1, match.group(2))
            for match in BLOCK.finditer(text) if not match.group(1)]


def _matches(expected: str, printed: str) -> bool:
    """Whitespace-insensitive comparison in which `...` in ``expected`` stands for any text."""
    parts = " ".join(expected.split()).split("...")
    return re.fullmatch(".*?".join(map(re.escape, parts)), " ".join(printed.split()), re.S) is not None


def run_examples(path: Path) -> int:
    """Run the runnable blocks of a docs page in one namespace, in order; each `# prints:`
    comment must match what the statement just above it printed (``...`` is a wildcard for
    paths and elided parts). Returns the number of comments checked."""
    namespace: dict = {}
    checked = 0
    for first_line, code in _runnable_blocks(path):
        indented = re.search(r"^[ \t]+# prints:", code, re.M)
        assert not indented, f"{path.name}: put `# prints:` at the top level of the block, under a print"
        start = 0
        for match in [*PRINTS.finditer(code), None]:
            end = match.start() if match else len(code)
            line = first_line + code.count("\n", 0, start)
            # blank lines keep the file's line numbers in tracebacks
            tree = ast.parse("\n" * (line - 1) + code[start:end], str(path))
            statements = tree.body[:-1] if match else tree.body
            exec(compile(ast.Module(statements, type_ignores=[]), str(path), "exec"), namespace)
            if match:
                where = f"{path.name}:{first_line + code.count(chr(10), 0, match.start())}"
                assert tree.body, f"{where}: `# prints:` must follow a statement"
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    exec(compile(ast.Module(tree.body[-1:], type_ignores=[]), str(path), "exec"), namespace)
                sys.stdout.write(out.getvalue())
                expected = " ".join(line.lstrip("#") for line in match.group(1).splitlines())
                assert _matches(expected, out.getvalue()), (
                    f"{where}: the comment says it prints\n  {' '.join(expected.split())}\n"
                    f"but it printed\n  {' '.join(out.getvalue().split())}"
                )
                checked += 1
                start = match.end()
    return checked


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
def test_doc_examples_run_and_print_what_they_say(page):
    path = DOCS / page
    comments = sum(len(PRINTS.findall(code)) for _, code in _runnable_blocks(path))
    if any("register_model" in code for _, code in _runnable_blocks(path)):
        # a page that registers models runs in its own interpreter: the registry is global
        runner = f"from tests.test_docs import run_examples, DOCS; print('CHECKED', run_examples(DOCS / {page!r}))"
        result = subprocess.run([sys.executable, "-c", runner], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"CHECKED {comments}" in result.stdout.splitlines()
        return
    assert run_examples(path) == comments


def test_a_stale_prints_comment_fails(tmp_path):
    page = tmp_path / "page.md"
    snippet = (
        "```python\n"
        "print('loaded', '/tmp/abc/vit.safetensors: 32 tensors, 0 missing,\\n2 unused')\n"
        "# prints: loaded .../vit.safetensors: {count} tensors, 0 missing,\n"
        "#         2 unused\n"
        "x = 1\n"
        "```\n"
    )
    page.write_text(snippet.format(count=32))
    assert run_examples(page) == 1
    page.write_text(snippet.format(count=31))
    with pytest.raises(AssertionError, match=r"page.md:3: the comment says it prints"):
        run_examples(page)
    page.write_text("```python\nx = 1\nprint(x)\ny = 2\n# prints: 1\n```\n")  # only the statement above counts
    with pytest.raises(AssertionError, match="but it printed"):
        run_examples(page)
    page.write_text("```python\nif True:\n    print(1)\n    # prints: 1\n```\n")
    with pytest.raises(AssertionError, match="top level"):
        run_examples(page)


def test_weights_table_covers_every_published_weight_set():
    from docs.registry_tables import render_weights_table

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

    from docs.config_reference import config_reference_rows, head_widths, render_config_reference
    from nnunet_bridge.config import SegZooNNUNetConfig, default_config_yaml

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
    assert default_config_yaml().strip() in page  # the defaults template, as generated
    assert head_widths()["UperNet head"] == 512 and "UperNet head 512" in page  # read from create_upernet_head


def test_config_reference_needs_no_nnunetv2():
    # the docs (and segzoo users without the bridge's extra) must build without nnU-Net
    code = ("import sys; import docs.config_reference as d; d.render_config_reference(); "
            "assert not any(m.startswith('nnunetv2') for m in sys.modules), 'nnunetv2 imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
