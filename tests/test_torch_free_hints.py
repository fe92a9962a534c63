"""Without torch, what needs it names the extra that installs it in one line (torch hidden by
a stand-in package that raises the ModuleNotFoundError of a missing module)."""

from __future__ import annotations

import os
import subprocess
import sys

_MISSING_TORCH = 'raise ModuleNotFoundError("No module named \'torch\'", name="torch")\n'


def _run(tmp_path, args):
    block = tmp_path / "block" / "torch"
    block.mkdir(parents=True, exist_ok=True)
    (block / "__init__.py").write_text(_MISSING_TORCH)
    path = os.pathsep.join([str(block.parent), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *args], env=dict(os.environ, PYTHONPATH=path),
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip


def test_demo_names_the_torch_extra(tmp_path):
    run = _run(tmp_path, ["-m", "deeplabv1.demo", "--quick", "--out", str(tmp_path / "d")])
    assert run.returncode == 2
    assert "Traceback" not in run.stderr, run.stderr[-800:]
    assert run.stderr.strip().splitlines()[-1].endswith('pip install "deeplabv1[torch]"')


def test_models_import_names_the_torch_extra(tmp_path):
    run = _run(tmp_path, ["-c", "import deeplabv1.models"])
    assert run.returncode == 1
    assert 'deeplabv1.models needs PyTorch, which is not installed: pip install "deeplabv1' in (
        run.stderr
    )


def test_crf_search_dense_names_the_torch_extra_before_writing(tmp_path):
    """--method dense runs through torch: without it the folder search stops in one line
    before its output folder (or the config in it) exists."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder in ("imgs", "npys", "labels"):
        (tmp_path / folder).mkdir()
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(
        tmp_path / "imgs" / "a.png")  # fmt: skip
    np.save(tmp_path / "npys" / "a.npy", rng.normal(size=(3, 12, 16)).astype(np.float32))
    Image.fromarray(rng.integers(0, 3, (12, 16), dtype=np.uint8)).save(
        tmp_path / "labels" / "a.png")  # fmt: skip
    run = _run(tmp_path, ["-m", "deeplabv1", "crf-search", "--image-dir", "imgs",
                          "--scores-dir", "npys", "--label-dir", "labels", "--method", "dense",
                          "-o", "out"])  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        'deeplabv1 crf-search: needs torch, which is not installed: pip install "deeplabv1[torch]"'
    ]
    assert not (tmp_path / "out").exists()
