"""The package is shaped like the system: each part's ``__init__`` says what it may import, and it does.

Every import of every module (at the top or inside a function; ``if TYPE_CHECKING:`` blocks aside, they run
only under a type checker) is checked against the ``May import:`` line of its part's docstring. Modules stay
small and the package's top level short.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["neuroscope.store", "neuroscope.core", "neuroscope.calibration", "neuroscope.labels", "neuroscope.explore",
         "neuroscope.server", "neuroscope.cli", "backends"]
MAX_LINES = 400
MAX_TOP_LEVEL = 15


def declared(part: str) -> list[str] | None:
    """The prefixes ``part`` may import (None: anything in neuroscope), from its docstring."""
    doc = importlib.import_module(part).__doc__ or ""
    m = re.search(r"May import:(.*?)(?:\n\n|\Z)", doc, re.S)
    assert m, f"{part}/__init__.py's docstring has no 'May import:' line"
    text = m.group(1)
    if "anything in neuroscope" in text:
        return None
    return re.findall(r"neuroscope(?:\.\w+)*", text)


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every absolute import of neuroscope or backends outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "neuroscope":
                found += [(node.lineno, f"neuroscope.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, mod) for line, mod in found if mod.split(".")[0] in ("neuroscope", "backends")]


def violations(part: str, allowed: list[str] | None, files: list[Path]) -> list[str]:
    ok = lambda mod, prefixes: any(mod == p or mod.startswith(p + ".") for p in prefixes)  # noqa: E731
    out = []
    for path in files:
        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        for line, mod in imports(path):
            if mod == "neuroscope.__version__" or ok(mod, [part]):
                continue
            if mod.split(".")[0] == "backends" or (allowed is not None and not ok(mod, allowed)):
                out.append(f"{name}:{line} imports {mod}")
    return out


@pytest.mark.parametrize("part", PARTS)
def test_each_part_imports_only_what_its_docstring_allows(part):
    files = sorted((ROOT / part.replace(".", "/")).rglob("*.py"))
    assert violations(part, declared(part), files) == []


def test_the_check_catches_an_import_it_does_not_allow(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from neuroscope.server import app\nfrom neuroscope import runtime\nimport backends.torch_backend\n"
                   "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from neuroscope.cli import serve\n")
    found = violations("neuroscope.store", ["neuroscope.progress"], [bad])
    assert [v.split(" imports ")[1] for v in found] == ["neuroscope.server", "neuroscope.runtime",
                                                       "backends.torch_backend"]


def test_modules_stay_small():
    big = [f"{p.relative_to(ROOT)}: {n} lines" for p in sorted((ROOT / "neuroscope").rglob("*.py"))
           + sorted((ROOT / "backends").rglob("*.py")) if (n := len(p.read_text(encoding="utf-8").splitlines()))
           > MAX_LINES]
    assert big == []


def test_the_top_level_is_short():
    entries = [p.name for p in (ROOT / "neuroscope").iterdir() if p.name != "__pycache__"]
    assert len(entries) <= MAX_TOP_LEVEL, sorted(entries)
