"""A copy of the package's source tree for tests that build or install it: pip and setuptools
write ``build/`` and ``*.egg-info`` beside the sources they build, which must not be the
repository's own."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def copy_source(dest: Path) -> Path:
    """pyproject.toml, README.md, LICENSE and src/ of this repository copied into ``dest``
    (caches and build leftovers left out); returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, dest / name)
    shutil.copytree(REPO / "src", dest / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))  # fmt: skip
    return dest
