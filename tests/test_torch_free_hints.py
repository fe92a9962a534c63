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


def test_crf_python_api_names_the_torch_extra(tmp_path):
    """docs/crf.md: without torch, ``import deeplabv1.crf.torch``, ``deeplab_crf`` and the
    drop-in with device="cuda" or method="dense" raise a ModuleNotFoundError naming the extra;
    the drop-in on the CPU runs."""
    code = (
        "import numpy as np\n"
        "import deeplabv1.crf.densecrf as dcrf\n"
        "from deeplabv1.crf import deeplab_crf\n"
        "def crf(**kw):\n"
        "    d = dcrf.DenseCRF2D(4, 3, 2, **kw)\n"
        "    d.setUnaryEnergy(np.ones((2, 12), np.float32))\n"
        "    d.addPairwiseGaussian(3, 3)\n"
        "    return d.inference(1)\n"
        "print('cpu', crf().shape)\n"
        "for what, call in [('torch', lambda: __import__('deeplabv1.crf.torch')),\n"
        "                   ('deeplab_crf', lambda: deeplab_crf(np.zeros((2, 3, 4), np.float32),\n"
        "                                                       np.zeros((3, 4, 3), np.uint8))),\n"
        "                   ('cuda', lambda: crf(device='cuda')),\n"
        "                   ('dense', lambda: crf(method='dense'))]:\n"
        "    try:\n"
        "        call()\n"
        "    except ModuleNotFoundError as exc:\n"
        "        print(what, exc)\n"
    )
    run = _run(tmp_path, ["-c", code])
    assert run.returncode == 0, run.stderr[-800:]
    lines = run.stdout.splitlines()
    assert lines[0] == "cpu (2, 12)"
    assert [line.split()[0] for line in lines[1:]] == ["torch", "deeplab_crf", "cuda", "dense"]
    hint = 'needs PyTorch, which is not installed: pip install "deeplabv1[torch]"'
    assert all(line.endswith(hint) for line in lines[1:]), lines


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
