"""The README's Python examples run as written."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README has no python example"
    for index, block in enumerate(blocks):
        # Each block runs as a module of its own (dataclasses look their module up).
        module = types.ModuleType(f"readme_block_{index}")
        sys.modules[module.__name__] = module
        try:
            exec(compile(block, str(README), "exec", dont_inherit=True), module.__dict__)
        finally:
            del sys.modules[module.__name__]
