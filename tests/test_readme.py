"""The README's Python quickstart runs as written, so it cannot rot."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def test_readme_python_blocks_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "the README must show a Python API example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
        assert namespace["explanation"].masks.shape == (len(namespace["test"]), 608)
        assert namespace["saliency"].shape == (4, 3, 32, 32)
