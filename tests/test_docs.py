"""Every ```python block in README.md and docs/*.md runs (blocks in one file share a namespace)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(path: Path) -> list[str]:
    return [m.group(1) for m in BLOCK.finditer(path.read_text())]


@pytest.mark.parametrize("path", [p for p in DOCS if _blocks(p)], ids=lambda p: p.name)
def test_doc_code_blocks_run(path: Path) -> None:
    # A real module, so dataclasses and string annotations resolve as in user code.
    module = types.ModuleType(f"docs_{path.stem.replace('-', '_')}")
    sys.modules[module.__name__] = module
    try:
        for index, block in enumerate(_blocks(path)):
            code = compile(block, f"{path.name}[block {index}]", "exec")
            exec(code, module.__dict__)
    finally:
        del sys.modules[module.__name__]
