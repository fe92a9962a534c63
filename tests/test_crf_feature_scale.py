"""Features too large for the lattice's float32 arithmetic (tiny standard deviations): a clear
ValueError before any kernel writes out of bounds (pydensecrf crashes there), and the same
results as pydensecrf just below that scale. The crashing cases run in a subprocess, so a
segfault fails the test instead of killing pytest."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from deeplabv1.crf import densecrf as dcrf

PRE = textwrap.dedent("""
    import numpy as np
    import deeplabv1.crf.densecrf as dcrf
    from deeplabv1.crf import CRFParams, deeplab_crf_np
    rng = np.random.default_rng(0)
    W, H, L = 7, 5, 3
    N = W * H
    U = rng.random((L, N)).astype(np.float32)
    img = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
    def crf(generic=False):
        d = dcrf.DenseCRF(N, L) if generic else dcrf.DenseCRF2D(W, H, L)
        d.setUnaryEnergy(U)
        return d
""")

CASES = {
    "energy_1e9": "d = crf(True); d.addPairwiseEnergy((rng.random((2, N)) * 1e9)"
    ".astype(np.float32), 3); d.inference(2)",
    "energy_1e11_5d": "d = crf(True); d.addPairwiseEnergy((rng.random((5, N)) * 1e11)"
    ".astype(np.float32), 3); d.inference(2)",
    "gaussian_sxy_1e-8": "d = crf(); d.addPairwiseGaussian(sxy=1e-8, compat=3); d.inference(2)",
    "bilateral_srgb_1e-9": "d = crf(); d.addPairwiseBilateral(sxy=5, srgb=1e-9, rgbim=img, "
    "compat=3); d.inference(2)",
    "deeplab_sb_1e-6": "s = rng.normal(size=(3, 48, 64)).astype(np.float32); "
    "im = rng.integers(0, 256, (48, 64, 3)).astype(np.uint8); "
    "deeplab_crf_np(s, im, CRFParams(4, 121, 1e-6, 3, 3))",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_huge_features_are_a_clear_error_not_a_crash(name):
    code = PRE + "try:\n    " + CASES[name] + "\nexcept ValueError as exc:\n    print('VE', exc)\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, f"crashed (rc {run.returncode}): {run.stderr[-500:]}"
    assert "VE features: values up to" in run.stdout
    assert "standard deviations" in run.stdout


@pytest.mark.parametrize("scale", [1e4, 1e6])
def test_large_features_below_the_limit_match_pydensecrf(scale):
    pd = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 not installed")
    rng = np.random.default_rng(2)
    n, num_labels = 40, 3
    u = rng.random((num_labels, n)).astype(np.float32)
    feats = (rng.random((2, n)) * scale).astype(np.float32)
    feats[:, 1::2] = feats[:, ::2]  # pairs of equal points: the filter is not the identity
    out = []
    for module in (dcrf, pd):
        d = module.DenseCRF(n, num_labels)
        d.setUnaryEnergy(u)
        d.addPairwiseEnergy(feats, 3)
        out.append(np.array(d.inference(3)))
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)


@pytest.mark.parametrize(("sa", "problem"), [
    ("1e-7", "features: values up to"),  # too large for the lattice's float32 arithmetic
    ("1e-300", "features: standard deviation "),  # 0 in float32: the division overflows
])  # fmt: skip
def test_cli_tiny_std_dev_is_one_line(tmp_path, sa, problem):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "i.png")
    np.save(tmp_path / "s.npy", rng.normal(size=(3, 48, 64)).astype(np.float32))
    argv = ["crf", "--image", "i.png", "--scores", "s.npy", "-o", "o.png", "--sa", sa]
    run = subprocess.run([sys.executable, "-m", "deeplabv1", *argv], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2, run.stderr[-500:]
    lines = [x for x in run.stderr.splitlines() if not x.startswith("deeplabv1.crf: compiling")]
    assert len(lines) == 1 and f"i.png: {problem}" in lines[0], lines
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("srgb", [1e-2, 1e-4])
def test_tiny_colour_std_dev_matches_pydensecrf_without_torch(srgb):
    """Lattice codes beyond 62 bits: the engine hashes the key rows (no torch fallback)."""
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import deeplabv1.crf.densecrf as dcrf
        rng = np.random.default_rng(0)
        u = rng.random((3, 64 * 48)).astype(np.float32) * 3
        img = rng.integers(0, 256, (48, 64, 3)).astype(np.uint8)
        d = dcrf.DenseCRF2D(64, 48, 3)
        d.setUnaryEnergy(u)
        d.addPairwiseBilateral(sxy=80, srgb={srgb}, rgbim=img, compat=10)
        np.save(sys.argv[1], np.asarray(d.inference(3)))
        from deeplabv1.crf import CRFParams, deeplab_crf_np
        q = deeplab_crf_np(u.reshape(3, 48, 64), img, CRFParams(4, 5, {srgb}, 3, 3), iters=3)
        assert np.isfinite(q).all()
        assert "torch" not in sys.modules
    """)
    pd = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 not installed")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/q.npy"
        run = subprocess.run([sys.executable, "-c", code, out], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        assert run.returncode == 0, run.stderr[-800:]
        ours = np.load(out)
    rng = np.random.default_rng(0)
    u = rng.random((3, 64 * 48)).astype(np.float32) * 3
    img = rng.integers(0, 256, (48, 64, 3)).astype(np.uint8)
    d = pd.DenseCRF2D(64, 48, 3)
    d.setUnaryEnergy(u)
    d.addPairwiseBilateral(sxy=80, srgb=srgb, rgbim=img, compat=10)
    np.testing.assert_allclose(ours, np.asarray(d.inference(3)), atol=2e-5)


@pytest.mark.parametrize("d", [2, 5])
def test_key_row_tables_equal_packed_code_tables(d):
    from deeplabv1.crf.engine import build

    rng = np.random.default_rng(d)
    feats = (rng.random((2 * 300, d)) * 6).astype(np.float32)
    q0, rank, _ = build.embed(feats.T)
    radix = build.make_radix(q0, 2)
    ids, nbrs = build.build_tables(q0, rank, radix, 300)
    ids_w, nbrs_w = build.build_tables_wide(q0, rank, 300)
    np.testing.assert_array_equal(ids_w, ids)
    np.testing.assert_array_equal(nbrs_w, nbrs)


OVERFLOW_CASES = {  # the name ends in the standard deviation as given
    "gaussian_sxy_1e-300": "d = crf(); d.addPairwiseGaussian(sxy=1e-300, compat=3); d.inference(2)",
    "gaussian_sxy_1e-40": "d = crf(); d.addPairwiseGaussian(sxy=(3, 1e-40), compat=3)",
    "bilateral_srgb_1e-40": "d = crf(); d.addPairwiseBilateral(sxy=5, srgb=(13, 1e-40, 13), "
    "rgbim=img, compat=3)",
    "deeplab_sa_1e-300": "s = rng.normal(size=(3, 48, 64)).astype(np.float32); "
    "im = rng.integers(0, 256, (48, 64, 3)).astype(np.uint8); "
    "deeplab_crf_np(s, im, CRFParams(4, 1e-300, 5, 3, 3))",
}


@pytest.mark.parametrize("name", sorted(OVERFLOW_CASES))
def test_std_devs_whose_features_overflow_float32_are_a_clear_error(name):
    """A standard deviation that is 0 in float32 (1e-300) or divides a position or colour past
    float32's range (1e-40; pydensecrf divides by zero or crashes there): a ValueError that
    names it, without numpy's RuntimeWarnings (turned into errors here)."""
    code = PRE + "try:\n    " + OVERFLOW_CASES[name] + "\nexcept ValueError as exc:\n" \
        "    print('VE', exc)\n"  # fmt: skip
    run = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, f"rc {run.returncode}: {run.stderr[-500:]}"
    assert run.stdout.startswith("VE features: standard deviation "), run.stdout
    assert name.rsplit("_", 1)[1] in run.stdout  # as given, not its float32 value (0, 1e-40)
    assert "overflow float32" in run.stdout
