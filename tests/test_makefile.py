"""The Makefile's setup line: torch always pinned; PyTorch's CPU index only when asked for."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _torch_line(*args: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    run = subprocess.run(["make", "-n", "-B", "venv", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=True)  # fmt: skip
    (line,) = [x for x in run.stdout.splitlines() if "pip install" in x and "torch==" in x]
    return line


def test_torch_is_pinned_and_the_default_adds_no_index():
    version = next(
        x.split(":=")[1].strip()
        for x in (REPO / "Makefile").read_text().splitlines()
        if x.startswith("TORCH_VERSION")
    )
    line = _torch_line()
    assert f'"torch=={version}"' in line
    assert "index-url" not in line


def test_torch_index_selects_the_cpu_wheels():
    line = _torch_line(f"TORCH_INDEX={CPU_INDEX}")
    assert f"--index-url {CPU_INDEX} " in line and '"torch==' in line


def test_readme_documents_the_cpu_index():
    assert f"TORCH_INDEX={CPU_INDEX}" in (REPO / "README.md").read_text()
