"""Docs links work in the repository as well as in the built site, and the home page names
every head and every command.

Every relative link in ``docs/*.md`` and ``README.md`` (and every ``docs/*.md`` path the
README names in backticks) must point to a file in the repository, and a ``#fragment`` to
a heading of its page. The pages the site generates (``models.md``, ``config.md``) are
committed too, equal to what the build renders; the build itself is strict and lists every
page (``tests/test_docs.py`` runs it).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from markdown.extensions.toc import slugify

import segzoo

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
DOCS_PATH = re.compile(r"`(docs/[\w./-]+\.md)(?:#[\w-]+)?`")  # the README names pages as paths in backticks


def _prose(text: str) -> str:
    """The text outside code blocks and inline code (``a[0](x)`` in code is not a link)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _anchors(page: Path) -> set[str]:
    """The ids the toc extension gives the page's headings (its default slugify, as mkdocs.yml uses)."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", page.read_text()), re.M)
    return {slugify(heading, "-") for heading in headings}


def broken_links(page: Path) -> list[str]:
    """Relative links of ``page`` whose file or heading does not exist, each with why."""
    text = page.read_text()
    targets = LINK.findall(_prose(text))
    if page.name == "README.md":
        targets += DOCS_PATH.findall(text)
    problems = []
    for target in targets:
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.is_file():
            problems.append(f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif fragment and file.suffix == ".md" and fragment not in _anchors(file):
            problems.append(f"{target}: no heading #{fragment} in {file.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_in_the_repository(page):
    assert not broken_links(page), f"{page.relative_to(ROOT)}: broken links: {broken_links(page)}"


def test_the_link_check_can_fail(tmp_path):
    (tmp_path / "there.md").write_text("# There\n\n## Some section\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok too](there.md#some-section) [gone](missing.md)\n"
        "[wrapped\ntext](there.md#no-such-heading) [web](https://example.org/x.md) ![img](pic.png)\n"
        "`a[0](not_a_link.md)`\n```python\nblocks[0](x.md)\n```\n"
    )
    assert broken_links(page) == ["missing.md: no file " + str(tmp_path / "missing.md"),
                                  "there.md#no-such-heading: no heading #no-such-heading in there.md",
                                  "pic.png: no file " + str(tmp_path / "pic.png")]


def test_generated_pages_are_committed_and_current():
    # a fresh interpreter: tests elsewhere register models in this one's global registry
    code = "from docs.hooks import stale_pages; print(stale_pages())"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    stale = result.stdout.strip().splitlines()[-1]
    assert stale == "[]", f"docs pages {stale} differ from what the site renders: run `python docs/hooks.py`"


def test_the_build_is_strict_and_lists_every_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["strict"] is True  # a broken link or a missing nav page fails the build

    def pages(nav) -> list[str]:
        items = nav.values() if isinstance(nav, dict) else nav
        return [p for item in items for p in (pages(item) if isinstance(item, (dict, list)) else [item])]

    in_nav = pages(config["nav"])
    assert sorted(in_nav) == sorted(p.name for p in DOCS.glob("*.md")), "every docs page once in mkdocs.yml's nav"


def _unnamed_commands(program: str, parser: argparse.ArgumentParser) -> list[str]:
    commands = [name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
                for name in action.choices]
    assert commands, f"no subcommands found in {program}'s parser"
    home = (DOCS / "index.md").read_text()
    return [f"`{program} {command}`" for command in commands if f"`{program} {command}" not in home]


def test_home_page_names_every_head_and_segzoo_command():
    from segzoo.cli import _parser

    home = (DOCS / "index.md").read_text()
    missing = [f"{head.title} (`{head.name}_*`)" for head in segzoo.list_heads() if f"`{head.name}_*`" not in home]
    missing += _unnamed_commands("segzoo", _parser())
    assert not missing, f"docs/index.md does not name {missing}"


def test_home_page_names_every_bridge_command():
    bridge_cli = pytest.importorskip("nnunet_bridge.cli", reason="the bridge's extra is not installed")
    missing = _unnamed_commands("segzoo-nnunet", bridge_cli._build_parser())
    assert not missing, f"docs/index.md does not name {missing}"
