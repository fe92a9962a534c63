"""Shared test fixtures: the real sample data in ../shared/data and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
VOC_SAMPLE_IDS = (
    "2007_000033", "2007_000129", "2007_000332", "2007_000346",
    "2007_000847", "2007_001284", "2007_001288",
)  # fmt: skip

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per xdist worker: the workers already use every core
    torch.set_num_threads(1)


def requires_cuda(test):
    """Decorator: the test needs a CUDA GPU (skipped without one; ``pytest -m cuda`` selects it)."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
    return pytest.mark.cuda(skip(test))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repo; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (expected ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def voc_samples(shared_data: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The seven real VOC images as (id, RGB uint8 HxWx3, labels uint8 HxW)."""
    from PIL import Image

    out = []
    for sid in VOC_SAMPLE_IDS:
        img = np.asarray(Image.open(shared_data / "voc_samples" / f"{sid}.png").convert("RGB"))
        lab = np.asarray(Image.open(shared_data / "voc_samples" / f"{sid}_label.png"))
        out.append((sid, img, lab))
    return out


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 (code under test may use the legacy global RNG)
