"""The Python in README.md and docs/*.md names things that exist.

Every ```python block must compile, every module it imports must import, every name it imports
from a module must exist, and every ``alias.attribute`` it reads from an imported deeplabv1
module must exist. Every dotted ``deeplabv1.x.y`` name in backticks in the prose must resolve.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
OPTIONAL = {"onnxruntime", "onnx", "pydensecrf"}  # extras: skipped when not installed


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in OPTIONAL:
            pytest.skip(f"optional {exc.name} not installed")
        raise


def _resolve(dotted: str):
    """Import the longest importable module prefix, then getattr the rest."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def check_snippet(code: str) -> int:
    """Check one snippet's imports and module attributes; returns the number of names checked."""
    tree = ast.parse(code)
    modules: dict[str, str] = {}  # local alias -> module name, for deeplabv1 modules
    checked = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                _import(alias.name)
                modules[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
                checked += 1
        elif isinstance(node, ast.ImportFrom):
            module = _import(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(
                    f"{node.module}.{alias.name}"
                ), f"from {node.module} import {alias.name}: no such name"
                value = getattr(module, alias.name, None)
                if value is None or isinstance(value, type(importlib)):
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                checked += 1
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and modules.get(node.value.id, "").startswith("deeplabv1")):  # fmt: skip
            module = _import(modules[node.value.id])
            assert hasattr(module, node.attr), f"{modules[node.value.id]}.{node.attr}: no such name"
            checked += 1
    return checked


SNIPPETS = [(p, i, code) for p in DOCS for i, code in enumerate(python_blocks(p))]


@pytest.mark.parametrize("path,index,code", SNIPPETS,
                         ids=[f"{p.name}-{i}" for p, i, _ in SNIPPETS])  # fmt: skip
def test_snippet_imports_resolve(path, index, code):
    assert check_snippet(code) > 0, f"{path.name} block {index} imports nothing"


def test_every_doc_with_python_names_its_modules():
    assert len(SNIPPETS) >= 10
    data = (REPO / "docs" / "data.md").read_text()
    assert "from deeplabv1.data.datasets import" in data


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_dotted_names_in_the_prose_resolve(path):
    names = set(re.findall(r"`(deeplabv1(?:\.[A-Za-z_]\w*)+)", path.read_text()))
    unresolved = []
    for name in sorted(names):
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            unresolved.append(name)
    assert unresolved == [], f"{path.name} names what the package does not have"


def test_the_checker_catches_a_wrong_module():
    with pytest.raises(AssertionError, match="no such name"):
        check_snippet("from deeplabv1.data import voc_dataset\n")
    with pytest.raises(AssertionError, match="no such name"):
        check_snippet("from deeplabv1.crf import numpy_lattice\nnumpy_lattice.no_such_thing\n")
