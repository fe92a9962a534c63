"""The CRF without torch: ``pip install deeplabv1`` into a fresh venv (the package's own
dependencies only) runs the pydensecrf drop-in, ``deeplab_crf_np``, ``deeplabv1 crf`` and
``deeplabv1 crf-search`` on folders; what needs torch says which extra installs it, in one line.

The venv reuses pip's cache (the wheels ``make venv`` downloaded); the numba kernels compile
once in it. About half a minute.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from source_tree import copy_source

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import deeplabv1.crf.densecrf as dcrf
    from deeplabv1.crf import deeplab_crf_np, set_num_threads
    from deeplabv1.crf.utils import unary_from_softmax

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(4), 24 * 32).T.reshape(4, 24, 32)
    for threads in (1, 2):
        set_num_threads(threads)
        d = dcrf.DenseCRF2D(32, 24, 4)
        d.setUnaryEnergy(unary_from_softmax(probs))
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=20, srgb=13, rgbim=img, compat=np.eye(4, dtype=np.float32))
        q = d.inference(5)
        assert q.shape == (4, 768) and abs(q.sum(0) - 1).max() < 1e-5
    out = deeplab_crf_np(np.log(probs).astype(np.float32), img, "deeplab-largefov")
    assert out.shape == (4, 24, 32)
    assert "torch" not in sys.modules
    try:
        import deeplabv1.crf.torch
    except ModuleNotFoundError as exc:
        print(exc)
""")


@pytest.fixture(scope="module")
def crf_venv(tmp_path_factory) -> Path:
    """A venv with ``pip install <this repository>`` and nothing else; its python."""
    venv = tmp_path_factory.mktemp("crf_only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    src = copy_source(tmp_path_factory.mktemp("crf_only_src"))  # pip builds beside it
    out = subprocess.run([python, "-m", "pip", "install", "--quiet", str(src)],
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return python


def _run(cmd, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NUMBA"))}
    env.update(env_extra or {})
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_the_install_has_no_torch(crf_venv):
    out = _run([crf_venv, "-m", "pip", "list", "--format=freeze"], crf_venv.parent)
    installed = {line.split("==")[0].lower() for line in out.stdout.split()}
    assert {"numpy", "numba", "pillow", "pyyaml", "tqdm", "deeplabv1"} <= installed
    assert not installed & {"torch", "scipy", "matplotlib"}, installed


def test_dropin_and_deeplab_crf_np_run_without_torch(crf_venv, tmp_path):
    out = _run([crf_venv, "-c", SCRIPT], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'pip install "deeplabv1[torch]"' in out.stdout


def test_the_crf_command_runs_and_torch_commands_name_the_extra(crf_venv, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    for folder in ("imgs", "npys"):
        (tmp_path / folder).mkdir()
    for stem in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"{stem}.png")  # fmt: skip
        np.save(tmp_path / "npys" / f"{stem}.npy", rng.normal(size=(3, 20, 30)).astype(np.float32))
    cli = crf_venv.parent / "deeplabv1"
    single = _run([cli, "crf", "--image", "imgs/a.png", "--scores", "npys/a.npy", "-o", "a.png"],
                  tmp_path)  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    labels = np.asarray(Image.open(tmp_path / "a.png"))
    assert labels.shape == (20, 30) and labels.max() < 3
    batch = _run([cli, "crf", "--image-dir", "imgs", "--scores-dir", "npys", "--out-dir", "out",
                  "--workers", "1"], tmp_path)  # fmt: skip
    assert batch.returncode == 0, batch.stderr[-3000:]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "a.png")), labels)
    (tmp_path / "labels").mkdir()
    for stem in ("a", "b"):
        Image.fromarray(rng.integers(0, 3, (20, 30), dtype=np.uint8)).save(
            tmp_path / "labels" / f"{stem}.png")  # fmt: skip
    search = _run([cli, "crf-search", "--image-dir", "imgs", "--scores-dir", "npys",
                   "--label-dir", "labels", "-o", "search"], tmp_path)  # fmt: skip
    assert search.returncode == 0, search.stderr[-3000:]
    assert "best: --w1" in search.stdout and (tmp_path / "search" / "best.json").is_file()
    needs = _run([cli, "crf", "--image", "imgs/a.png", "--scores", "npys/a.npy", "-o", "c.png"],
                 tmp_path, {"DEEPLABV1_CRF_NUMBA": "0"})  # the torch path  # fmt: skip
    assert needs.returncode == 2
    assert needs.stderr.strip().count("\n") == 0 and "Traceback" not in needs.stderr
    assert 'pip install "deeplabv1[torch]"' in needs.stderr
