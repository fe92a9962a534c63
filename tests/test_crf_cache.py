"""The numba kernel cache: a one-line notice while the kernels compile, nothing when they load;
one cache for every thread count; loading skips numba's compiler set-up and gives the same bits;
a read-only install caches in the user's cache folder, and with that read-only too in a
temporary folder.

Each scenario compiles the kernels once (a few seconds) in fresh processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deeplabv1.crf.engine.jit import NOTICE

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

CRF = (
    "import numpy as np\n"
    "import deeplabv1.crf.densecrf as dcrf\n"
    "rng = np.random.default_rng(0)\n"
    "img = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)\n"
    "d = dcrf.DenseCRF2D(20, 15, 21)\n"
    "d.setUnaryEnergy(rng.random((21, 300), dtype=np.float32))\n"
    "d.addPairwiseGaussian(sxy=3, compat=3)\n"
    "d.addPairwiseBilateral(sxy=30, srgb=13, rgbim=img, compat=4)\n"
    "q = d.inference(3)\n"
    "assert abs(q.sum(0) - 1).max() < 1e-5\n"
    "import hashlib, sys\n"
    "print(hashlib.sha256(q.tobytes()).hexdigest(), 'numba.np.linalg' in sys.modules)\n"
)


def _crf(env: dict, threads: int, stdout: bool = False) -> str:
    """stderr (or stdout) of a tiny CRF in a fresh process with ``env`` and
    NUMBA_NUM_THREADS=threads."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "XDG_"))}
    out = subprocess.run([sys.executable, "-c", CRF], capture_output=True, text=True,
                         env={**base, **env, "NUMBA_NUM_THREADS": str(threads)},
                         timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout if stdout else out.stderr


def test_notice_once_and_one_cache_for_every_thread_count(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    first = _crf(env, 1)
    assert first.count(NOTICE) == 1  # one line while they compile
    assert _crf(env, 2).count(NOTICE) == 0  # two threads: the same kernels, loaded
    assert _crf(env, 1).count(NOTICE) == 0
    assert any((tmp_path / "cache").rglob("*.nbi"))
    # a process that only loads kernels never sets up numba's compiler (linalg, scipy, ...),
    # and its marginals are those of numba's own loading, bit for bit
    fast, linalg = _crf(env, 1, stdout=True).split()
    assert linalg == "False"
    slow = _crf({**env, "DEEPLABV1_CRF_FAST_LOAD": "0"}, 1, stdout=True).split()
    assert slow == [fast, "True"]


def _read_only(src: Path, dst: Path) -> bool:
    """Bind-mount src read-only at dst (root with mount rights); False where impossible."""
    dst.mkdir()
    for cmd in (["mount", "--bind", str(src), str(dst)],
                ["mount", "-o", "remount,ro,bind", str(dst)]):  # fmt: skip
        try:
            if subprocess.run(cmd, capture_output=True).returncode != 0:
                subprocess.run(["umount", str(dst)], capture_output=True)
                return False
        except OSError:
            return False
    return True


def test_read_only_install_falls_back_to_user_then_temp_cache(tmp_path):
    """The package on a read-only mount: kernels cache in $HOME/.cache/numba; with the home
    read-only too, in a per-user folder of $TMPDIR (no error, no recompiling)."""
    pkg = tmp_path / "pkg"
    shutil.copytree(REPO / "src" / "deeplabv1", pkg / "deeplabv1",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    if not _read_only(pkg, tmp_path / "ro"):
        pytest.skip("needs a read-only bind mount (root with mount rights)")
    mounts = [tmp_path / "ro"]
    try:
        env = {"PYTHONPATH": str(tmp_path / "ro"), "HOME": str(home), "TMPDIR": str(tmp_path)}
        assert _crf(env, 1).count(NOTICE) == 1
        assert _crf(env, 2).count(NOTICE) == 0
        assert any((home / ".cache" / "numba").rglob("*.nbi"))
        assert not any((pkg / "deeplabv1").rglob("*.nbi"))
        assert _read_only(home, tmp_path / "ro_home")
        mounts.append(tmp_path / "ro_home")
        env["HOME"] = str(tmp_path / "ro_home")
        shutil.rmtree(home / ".cache" / "numba")  # gone below the read-only view too
        assert _crf(env, 1).count(NOTICE) == 1
        assert _crf(env, 1).count(NOTICE) == 0
        assert any(tmp_path.glob("deeplabv1-numba-cache-*/**/*.nbi"))
    finally:
        for mount in reversed(mounts):
            subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_changed_intrinsic_module_recompiles_the_kernels(tmp_path):
    """The kernels inline the LLVM IR of the simd modules, whose files numba does not watch:
    a newer one of them (a changed intrinsic) must recompile the cached kernels, an
    untouched package must not."""
    pkg = tmp_path / "pkg"
    shutil.copytree(REPO / "src" / "deeplabv1", pkg / "deeplabv1",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    env = {"PYTHONPATH": str(pkg), "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    assert _crf(env, 1).count(NOTICE) == 1
    assert _crf(env, 1).count(NOTICE) == 0
    intrinsics = pkg / "deeplabv1" / "crf" / "engine" / "simd_vertices.py"
    later = intrinsics.stat().st_mtime + 10
    os.utime(intrinsics, (later, later))
    assert _crf(env, 1).count(NOTICE) == 1
    assert _crf(env, 1).count(NOTICE) == 0
