"""The torch-free CPU engine (crf/engine/) and the drop-in on it, against the torch side."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from deeplabv1.crf import densecrf as dcrf
from deeplabv1.crf.engine import build as engine_build
from deeplabv1.crf.engine import cache as engine_cache
from deeplabv1.crf.engine import fused, jit, threads
from deeplabv1.crf.engine import meanfield as engine_mf
from deeplabv1.crf.engine.lattice import NumpyLattice
from deeplabv1.crf.features import bilateral_features_np, gaussian_features_np
from deeplabv1.crf.torch.features import bilateral_features, gaussian_features

pytestmark = pytest.mark.skipif(not jit.available(), reason="numba not installed")


def _crop(img: np.ndarray, h: int = 24, w: int = 32) -> np.ndarray:
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return np.ascontiguousarray(img[top : top + h, left : left + w])


def _blocky_unary(labels: np.ndarray, num_labels: int, seed: int) -> np.ndarray:
    """Energies (L, N) of a confident but blocky (stride-8) labelling with noise."""
    lab = labels.astype(np.int64) % num_labels
    coarse = lab[::8, ::8].repeat(8, 0).repeat(8, 1)[: lab.shape[0], : lab.shape[1]]
    rng = np.random.default_rng(seed)
    scores = 3.0 * np.eye(num_labels)[coarse].transpose(2, 0, 1) + rng.normal(
        scale=1.0, size=(num_labels,) + lab.shape
    )
    return np.ascontiguousarray(-scores.reshape(num_labels, -1), dtype=np.float32)


def _crf(img, u, method="lattice", norm=dcrf.NORMALIZE_AFTER, compat=(3.0, 4.0)):
    h, w, _ = img.shape
    d = dcrf.DenseCRF2D(w, h, u.shape[0], method=method)
    d.setUnaryEnergy(u)
    d.addPairwiseGaussian(sxy=3, compat=compat[0], normalization=norm)
    d.addPairwiseBilateral(sxy=20, srgb=10, rgbim=img, compat=compat[1], normalization=norm)
    return d


def test_dropin_inference_does_not_import_torch(tmp_path) -> None:
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from deeplabv1.crf import densecrf as dcrf, set_num_threads
        from deeplabv1.crf.utils import unary_from_softmax, create_pairwise_gaussian
        rng = np.random.default_rng(0)
        img = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        set_num_threads(1)
        d = dcrf.DenseCRF2D(16, 12, 4)
        d.setUnaryEnergy(unary_from_softmax(rng.dirichlet(np.ones(4), 192).T.reshape(4, 12, 16)))
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=20, srgb=13, rgbim=img, compat=10)
        d.addPairwiseEnergy(create_pairwise_gaussian((2, 2), (12, 16)), compat=1.5)
        q = d.inference(3)
        Q, t1, t2 = d.startInference()
        d.stepInference(Q, t1, t2)
        d.klDivergence(Q)
        assert q.shape == (4, 192) and abs(q.sum(0) - 1).max() < 1e-5
        print("torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=True)  # fmt: skip
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("batch", "n", "d", "spread"),
                         [(1, 2000, 2, 3.0), (2, 400, 5, 6.0), (3, 300, 1, 4.0),
                          (1, 5000, 5, 30.0), (1, 1, 3, 1.0)])  # fmt: skip
def test_tables_equal_torch_sort_build(monkeypatch, batch, n, d, spread) -> None:
    """The numpy build gives exactly the torch sort-based build's tables."""
    from deeplabv1.crf.torch import tables as li

    g = torch.Generator().manual_seed(d + n)
    f = (torch.rand(batch, n, d, generator=g, dtype=torch.float64) * spread).float()
    lat = engine_build.build_lattice(f.reshape(-1, d).numpy(), n)
    with monkeypatch.context() as m:
        m.setattr(li.jit, "available", lambda: False)
        slow = li.lattice_tables(f)
    assert lat.num_lattice == slow.num_lattice and lat.num_points == batch * n
    assert lat.offs.dtype == np.int32 and lat.offs.shape == (batch * n, d + 1)
    np.testing.assert_array_equal(lat.offs.reshape(-1), slow.slice.col_indices().numpy())
    np.testing.assert_array_equal(lat.wts.reshape(-1), slow.slice.values().numpy())
    np.testing.assert_array_equal(lat.bary, slow.bary.numpy())
    np.testing.assert_array_equal(lat.neighbours, slow.neighbours.numpy())


def _dense_filter(f: np.ndarray, v: np.ndarray) -> np.ndarray:
    d2 = ((f[:, None, :].astype(np.float64) - f[None, :, :]) ** 2).sum(-1)
    return np.exp(-0.5 * d2) @ v.astype(np.float64)


def test_filter_against_exact_and_torch_csr(monkeypatch, voc_samples) -> None:
    """Normalised lattice filtering is close to the exact O(N^2) one and equal (to float
    rounding) to the torch CSR filter of the same lattice, forward and reverse."""
    from deeplabv1.crf.torch.lattice import PermutohedralLattice

    rng = np.random.default_rng(3)
    for _, rgb, _ in voc_samples[:3]:
        img = _crop(rgb)
        for f, bound in [(gaussian_features_np(24, 32, 3.0), 0.01),
                         (bilateral_features_np(img, 20.0, 10.0), 0.05)]:  # fmt: skip
            v = rng.random((f.shape[0], 3), dtype=np.float32)
            lat = engine_build.build_lattice(f, f.shape[0])
            out, norm = lat.filter(v), lat.normalizer()
            exact, exact_norm = _dense_filter(f, v), _dense_filter(f, np.ones((len(f), 1)))
            err = np.linalg.norm(out / norm - exact / exact_norm) / np.linalg.norm(
                exact / exact_norm
            )
            assert err < bound
            fast = [lat.filter(v, reverse=reverse) for reverse in (False, True)]
            with monkeypatch.context() as m:
                m.setattr(threads, "ENABLED", False)  # the torch CSR filter
                torch_lat = PermutohedralLattice(torch.from_numpy(f)[None])
                for reverse in (False, True):
                    ref = torch_lat.apply(torch.from_numpy(v)[None], reverse=reverse)[0]
                    np.testing.assert_allclose(fast[reverse], ref.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", [dcrf.NORMALIZE_AFTER, dcrf.NORMALIZE_SYMMETRIC])
def test_meanfield_against_exact_and_torch_path(monkeypatch, voc_samples, norm) -> None:
    """Drop-in inference on real crops: labels agree with exact dense inference (lattice
    approximation) and the marginals equal the torch path's (numba disabled) to 1e-4."""
    agree = []
    for k, (_, rgb, lab) in enumerate(voc_samples[:3]):
        img, lab = _crop(rgb, 20, 28), _crop(lab, 20, 28)
        u = _blocky_unary(lab, 5, k)
        crf = _crf(img, u, norm=norm)
        assert crf._numpy_engine()
        ours = crf.inference(10)
        exact = _crf(img, u, method="dense", norm=norm).inference(10)
        agree.append(float((ours.argmax(0) == exact.argmax(0)).mean()))
        with monkeypatch.context() as m:
            m.setattr(threads, "ENABLED", False)
            slow = _crf(img, u, norm=norm)
            assert slow._torch is not None
            ref = slow.inference(10)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)
        assert (ours.argmax(0) == ref.argmax(0)).mean() >= 0.999
    assert min(agree) >= 0.98 and np.mean(agree) >= 0.99


@pytest.mark.parametrize("threads_", [1, 2])
@pytest.mark.parametrize("mode", ["none", "before", "after", "symmetric"])
def test_numpy_meanfield_terms_and_modes(monkeypatch, mode, threads_) -> None:
    """engine_mf.mean_field (fused kernels) with 1-3 terms and a batch of 2 equals the
    same iteration written with message/step (filter per term) and the torch path's
    mean_field with numba disabled (CSR filters on the sort-built lattice), on one thread
    (where the blur's buffers swap roles after an even number of axes: the 5-D term) and
    on two."""
    from deeplabv1.crf.torch.meanfield import PairwiseTerm, mean_field

    rng = np.random.default_rng(4)
    batch, n, num_labels = 2, 60, 3
    feats = [rng.random((batch * n, d)).astype(np.float32) * 6 for d in (2, 5, 3)]
    u = (rng.normal(size=(batch, num_labels, n)) * 2).astype(np.float32)
    weights = (3.0, 4.0, 1.5)
    for count in (1, 2, 3):
        terms = [engine_mf.prepare_term(engine_build.build_lattice(f, n), w, mode)
                 for f, w in zip(feats[:count], weights)]  # fmt: skip
        q = engine_mf.mean_field(u, terms, 5, num_threads=threads_)
        assert q.shape == (batch, num_labels, n) and q.dtype == np.float32
        np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-5)
        neg = np.ascontiguousarray(-u.transpose(0, 2, 1).reshape(-1, num_labels))
        step = engine_mf.step(neg, np.zeros_like(neg), [])
        for _ in range(5):
            step = engine_mf.step(neg, step, terms)
        step = step.reshape(batch, n, num_labels).transpose(0, 2, 1)
        np.testing.assert_allclose(q, step, rtol=0, atol=5e-5)
        pts = [PairwiseTerm(torch.from_numpy(f).view(batch, n, -1), w, mode)
               for f, w in zip(feats[:count], weights)]  # fmt: skip
        with monkeypatch.context() as m:
            m.setattr(threads, "ENABLED", False)
            ref = mean_field(torch.from_numpy(u), pts, iters=5).numpy()
        np.testing.assert_allclose(q, ref, rtol=0, atol=5e-5)


def test_numpy_meanfield_float64_tables_keep_their_precision_on_one_thread() -> None:
    """float64 lattice tables: the one-thread pass (two blur buffers swapping roles) keeps
    float64 lattice values as the two-thread one (NumpyLattice.workspace) does: the same
    bits on one and two threads, both close to a float64 iteration on the float64 filter."""
    from deeplabv1.crf.torch.lattice import PermutohedralLattice

    rng = np.random.default_rng(3)
    n, num_labels = 2000, 21
    feats = [rng.random((1, n, d)) * s for d, s in ((2, 8.0), (5, 6.0))]
    lats = [PermutohedralLattice(torch.from_numpy(f)).numba_tables() for f in feats]
    assert all(lat.dtype == np.float64 for lat in lats)
    u = rng.normal(0.0, 2.0, (1, num_labels, n)).astype(np.float32)
    for mode in ("symmetric", "after"):
        terms = [engine_mf.prepare_term(lat, w, mode) for lat, w in zip(lats, (3.0, 10.0))]
        neg = -u[0].T.astype(np.float64)
        ref = np.exp(neg - neg.max(1, keepdims=True))
        ref /= ref.sum(1, keepdims=True)
        for _ in range(5):
            m = neg.copy()
            for t in terms:
                m += t.lattice.filter(ref * t.pre[:, None] if t.pre is not None else ref,
                                      num_threads=1) * t.post[:, None]  # fmt: skip
            ref = np.exp(m - m.max(1, keepdims=True))
            ref /= ref.sum(1, keepdims=True)
        one, two = (engine_mf.mean_field(u, terms, 5, num_threads=k) for k in (1, 2))
        np.testing.assert_allclose(one[0], ref.T, rtol=0, atol=2e-6)
        assert np.array_equal(one, two)


def test_features_bitwise_equal_torch(voc_samples) -> None:
    for h, w, s in [(375, 500, 3.0), (17, 23, (0.7, 7.3)), (5, 4, 121.0)]:
        np.testing.assert_array_equal(gaussian_features_np(h, w, s),
                                      gaussian_features(h, w, s)[0].numpy())  # fmt: skip
    for _, rgb, _ in voc_samples[:2]:
        for sxy, srgb in [(121.0, 5.0), (80.0, (13.0, 7.3, 0.9))]:
            ref = bilateral_features(rgb, sxy, srgb)[0].numpy()
            np.testing.assert_array_equal(bilateral_features_np(rgb, sxy, srgb), ref)


def test_cache_reuses_equal_features_and_clears() -> None:
    from deeplabv1.crf.torch.lattice import clear_cache

    engine_cache.clear_cache()
    f = gaussian_features_np(20, 30, 3.0)
    a = engine_cache.cached_lattice(f, 600)
    assert engine_cache.cached_lattice(f.copy(), 600) is a
    assert engine_cache.cached_lattice(f, 300) is not a  # another batch split
    g = f.copy()
    g[0, 0] += 1.0
    b = engine_cache.cached_lattice(g, 600)
    assert b is not a and engine_cache.cached_lattice(g, 600) is b
    assert len(engine_cache._CACHE) == engine_cache.CACHE_SIZE == 2
    c = engine_cache.cached_lattice(f, 600)  # evicted by the two newer ones: rebuilt
    assert c is not a
    np.testing.assert_array_equal(c.offs, a.offs)
    assert c.normalizer() is c.normalizer()
    clear_cache()  # the torch module's clear_cache clears this cache too
    assert engine_cache._CACHE == []
    # the drop-in builds the position-only lattice of an image size once
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    lats, feats = [], []
    for _ in range(2):
        crf = _crf(img, rng.normal(size=(3, 600)).astype(np.float32))
        lats.append(crf._np_terms[0].lattice)
        feats.append(crf._specs[0][0])
    assert lats[0] is lats[1]
    # the second object keeps the cache's features, not its own equal copy
    assert feats[1] is feats[0] is engine_cache.cached_features(lats[0])
    assert engine_cache.cached_features(a) is None  # evicted


def test_threads_setting(monkeypatch) -> None:
    from deeplabv1.crf import get_num_threads, set_num_threads

    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (20, 25, 3), dtype=np.uint8)
    u = rng.normal(size=(6, 500)).astype(np.float32)
    ranges = []  # the pixel ranges of each fused pass
    real = fused.fused_step
    monkeypatch.setattr(fused, "fused_step", lambda *a: ranges.append(a[-2:]) or real(*a))
    with pytest.raises(ValueError, match="n >= 1"):
        set_num_threads(0)
    before = threads._THREADS
    two_threads = threads.use_threads(2) == 2  # NUMBA_NUM_THREADS may allow only one
    try:
        set_num_threads(1)
        assert get_num_threads() == 1
        one = _crf(img, u).inference(5)
        assert set(ranges) == {(0, 500)}
        ranges.clear()
        set_num_threads(2)
        two = _crf(img, u).inference(5)
        if two_threads:
            assert get_num_threads() == 2 and set(ranges) == {(0, 250), (250, 500)}
        np.testing.assert_allclose(one, two, rtol=0, atol=2e-6)  # splat sums in another order
        # the torch API keeps following torch's thread count
        ranges.clear()
        set_num_threads(1)
        torch_before = torch.get_num_threads()
        try:
            torch.set_num_threads(2)
            from deeplabv1.crf import PairwiseTerm, mean_field

            feats = torch.from_numpy(gaussian_features_np(20, 25, 3.0))[None]
            mean_field(torch.from_numpy(u)[None], [PairwiseTerm(feats, 3.0, "after")], iters=2)
        finally:
            torch.set_num_threads(torch_before)
        if two_threads:
            assert set(ranges) == {(0, 250), (250, 500)}
    finally:
        threads._THREADS = before


def test_codes_beyond_62_bits_stay_on_the_engine() -> None:
    """Packed codes would need more than 62 bits: the engine hashes key rows; pydensecrf's
    result."""
    pd = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 not installed")
    rng = np.random.default_rng(6)
    f = (rng.normal(size=(80, 5)) * 1e6).astype(np.float32)
    f[1::2] = f[::2] + rng.normal(size=(40, 5)).astype(np.float32)  # near pairs: real blur
    q0, _, _ = engine_build.embed(f.T)
    assert engine_build.make_radix(q0, 1) is None
    assert engine_build.build_lattice(f, 80) is not None
    u = rng.normal(size=(3, 80)).astype(np.float32)
    out = []
    for module in (dcrf, pd):
        crf = module.DenseCRF(80, 3)
        crf.setUnaryEnergy(u)
        crf.addPairwiseEnergy(np.ascontiguousarray(f.T), compat=3.0)
        out.append(np.asarray(crf.inference(3)))
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)


@pytest.mark.parametrize("compat", [2.0, np.array([1.0, -2.0, 0.5, 3.0]),
                                    np.arange(16.0).reshape(4, 4) / 8])  # fmt: skip
def test_compats_and_steps_match_torch_path(monkeypatch, compat) -> None:
    """Potts, diagonal and matrix compatibilities run on the numpy engine; its inference,
    stepInference and klDivergence equal the torch side's (numba disabled)."""
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    u = rng.normal(size=(4, 120)).astype(np.float32)

    def crf():
        d = _crf(img, u, norm=dcrf.NORMALIZE_SYMMETRIC)
        d.addPairwiseGaussian(sxy=2, compat=compat)
        return d

    fast = crf()
    assert fast._numpy_engine() and len(fast._np_terms) == 3
    with monkeypatch.context() as m:
        m.setattr(threads, "ENABLED", False)
        slow = crf()
        assert slow._torch is not None
        q_slow, _, _ = slow.startInference()
        for _ in range(3):
            slow.stepInference(q_slow)
        kl_slow = slow.klDivergence(q_slow)
        inf_slow = slow.inference(4)
    q_fast, _, _ = fast.startInference()
    for _ in range(3):
        fast.stepInference(q_fast)
    np.testing.assert_allclose(q_fast, q_slow, rtol=0, atol=1e-5)
    np.testing.assert_allclose(q_fast, fast.inference(3), rtol=0, atol=1e-5)
    np.testing.assert_allclose(fast.inference(4), inf_slow, rtol=0, atol=2e-5)
    assert fast.klDivergence(q_fast) == pytest.approx(kl_slow, rel=1e-5)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5])
def test_filter_threads_and_axis_parity_equal_torch_csr(monkeypatch, d) -> None:
    """The blur's buffer rotation (even and odd axis counts, 1 and 2 workers) gives the torch
    CSR filter's result to float64 rounding, forward and reverse, twice in a row (reused
    workspaces)."""
    from deeplabv1.crf.torch.lattice import PermutohedralLattice

    rng = np.random.default_rng(d)
    f = rng.random((2, 150, d)) * 5
    v = rng.random((300, 3))
    lat = PermutohedralLattice(torch.from_numpy(f)).numba_tables()  # float64 NumpyLattice
    assert isinstance(lat, NumpyLattice) and lat.dtype == np.float64
    fast = {(t, r): [lat.filter(v, reverse=r, num_threads=t) for _ in range(2)]
            for t in (1, 2) for r in (False, True)}  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(threads, "ENABLED", False)
        ref_lat = PermutohedralLattice(torch.from_numpy(f))
        for (_, r), outs in fast.items():
            ref = ref_lat.apply(torch.from_numpy(v).view(2, 150, 3), reverse=r).reshape(300, 3)
            for out in outs:
                np.testing.assert_allclose(out, ref.numpy(), rtol=1e-12, atol=1e-12)


def test_no_pairwise_term_is_the_softmax() -> None:
    rng = np.random.default_rng(8)
    u = rng.normal(size=(4, 30)).astype(np.float32) * 3
    crf = dcrf.DenseCRF(30, 4)
    crf.setUnaryEnergy(u)
    assert crf._numpy_engine()
    e = np.exp(-u.astype(np.float64) + u.min(0))
    for iters in (0, 3):
        np.testing.assert_allclose(crf.inference(iters), e / e.sum(0), rtol=1e-5, atol=1e-7)


def test_build_rejects_bad_features() -> None:
    for f, n, match in [(np.zeros((10, 2), np.float32), 3, "multiple"),
                        (np.zeros(10, np.float32), 10, r"\(P, d\)"),
                        (np.full((4, 2), np.nan, np.float32), 4, "NaN"),
                        (np.full((4, 2), 1e13, np.float32), 4, "exceed")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            engine_build.build_lattice(f, n)
    crf = dcrf.DenseCRF(4, 2)
    with pytest.raises(ValueError, match="exceed"):
        crf.addPairwiseEnergy(np.full((2, 4), 1e13, np.float32), compat=1.0)


def test_new_images_of_one_size_rebuild_only_the_bilateral_lattice(monkeypatch) -> None:
    """docs/crf_lattice.md: over images of one size with a Gaussian and a bilateral term (the
    DeepLab convention, the drop-in, the batch CLI) the position-only lattice is built once."""
    from deeplabv1.crf import deeplab_crf_np

    built = []
    real = engine_cache.build_lattice

    def counting(features, *args, **kwargs):
        built.append(features.shape[1])
        return real(features, *args, **kwargs)

    monkeypatch.setattr(engine_cache, "build_lattice", counting)
    engine_cache.clear_cache()
    rng = np.random.default_rng(6)
    for run in (lambda img: deeplab_crf_np(rng.normal(size=(3, 20, 30)).astype(np.float32),
                                           img, "deeplab-largefov", iters=2),
                lambda img: _crf(img, rng.normal(size=(3, 600)).astype(np.float32))):  # fmt: skip
        built.clear()
        for _ in range(4):
            run(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
        assert sorted(built) == [2] + [5] * 4  # one position-only lattice, 4 bilateral ones
    engine_cache.clear_cache()
