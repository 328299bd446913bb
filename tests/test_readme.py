"""The README's five-line example runs as written (full-size ViT-L, random weights, CPU)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_five_line_example_runs(capsys):
    text = README.read_text()
    section = text.split("## In five lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) == 5
    namespace: dict = {}
    exec(compile(code, "README example", "exec"), namespace)
    assert namespace["logits"].shape == (1, 4, 333, 517)
    out = capsys.readouterr().out
    assert "decode_head:" in out and "segformer_dinov3_large.lvd1689m" in out
