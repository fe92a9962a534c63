"""User-facing text is written for someone who has only the repository or the installed package.

README.md, docs/*.md, the packaged configs (installed, and summarised by ``deeplabv1 train
--list-configs``) and every ``--help`` must not point at files outside the repository, at the
tracker or at how the work was organised.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from deeplabv1.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
FILES = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    *sorted((REPO / "src" / "deeplabv1" / "configs").glob("*.yaml")),
]

# pattern -> what it is
INTERNAL = {
    r"\bSPEC\b": "a reference to a specification users do not have",
    r"(?i)\bissues? ?#?\d+": "a tracker reference",
    r"(?i)\bthe issue\b": "a tracker reference",
    r"\.\./shared|\bshared/data\b": "a folder outside the repository",
    r"(?i)\bsessions?\b": "how the work was organised",
    r"(?i)\b(lent|given) to this task\b|\bthis task\b": "how the work was organised",
    r"(?i)\bthe lead\b|\bworktree\b|\bdevelopers? (was|were)\b": "how the work was organised",
    r"\bP\d\b": "an internal reference label",
    r"(?i)\bthis environment\b|\bfrom this machine\b": "the machine the text was written on",
    r"(?i)\bin development\b|\bthe earlier [\w-]+ version\b": "the project's history",
}


def _findings(name: str, text: str) -> list[str]:
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        for pattern, what in INTERNAL.items():
            if re.search(pattern, line):
                found.append(f"{name}:{n}: {what}: {line.strip()[:100]}")
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_internal_language(path):
    assert _findings(path.name, path.read_text()) == []


SOURCE_PATTERNS = [r"\bSPEC\b", r"(?i)\bissues? ?#?\d+", r"\.\./shared|\bshared/data\b",
                   r"\bP\d\b"]  # fmt: skip


def test_no_internal_references_in_the_package():
    """Docstrings and comments (read by users in their editor and by help()) too."""
    found = []
    for path in sorted((REPO / "src" / "deeplabv1").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if any(re.search(pattern, line) for pattern in SOURCE_PATTERNS):
                found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:100]}")
    assert found == []


def test_no_internal_language_in_help():
    found = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        found.extend(_findings(f"deeplabv1{name} --help", parser.format_help()))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    walk(child, f"{name} {sub}")

    walk(build_parser(), "")
    assert found == []


@pytest.mark.parametrize("text", [
    "Energy over labels x (SPEC section 4):", "- The CRF (issue 3): the speed target",
    "VOC samples from `../shared/data`", "This session's changes took the peak down",
    "none was lent to this task", "the released solver used 30 (P2 confirms)",
    "Earlier in development the demo gave", "the same result as the earlier one-shot version",
])  # fmt: skip
def test_the_patterns_catch_what_was_there(text):
    assert _findings("x", text)


@pytest.mark.parametrize("text", [
    "s = ort.InferenceSession('model.onnx')", "msc_init=\"spec\" (the default)",
    "Report a bug with the smallest failing command.", "the 2-core development machine",
])  # fmt: skip
def test_the_patterns_leave_ordinary_text(text):
    assert _findings("x", text) == []
