"""tools/loc.py: the line count the structural step is judged by counts code only."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

TOOL = Path(__file__).resolve().parents[2] / "tools" / "loc.py"


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("loc", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCE = '''"""A module docstring
over two lines."""

# a comment
import os  # code with a comment


class A:
    """A class docstring."""

    x = (1,
         2)

    def f(self) -> str:
        """One line."""
        return """not a docstring,
        a value"""
'''


def test_code_lines_leave_out_blanks_comments_and_docstrings() -> None:
    # import, class, x = (1, 2) over two lines, def, return over two lines
    assert load_tool().code_lines(SOURCE) == 7


def test_feature_modules_are_told_apart_from_what_was_there() -> None:
    loc = load_tool()
    assert loc.feature_of("logverify/verify.py") == "15 signing"
    assert loc.feature_of("parent_side/fairshare.py") == "16 fair share"
    assert loc.feature_of("parent_side/spool.py") is None
