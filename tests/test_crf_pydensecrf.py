"""The drop-in against the real pydensecrf (pydensecrf2), input by input.

The rule: where pydensecrf returns a well-defined result, the drop-in returns the same one
(a PydensecrfWarning where the input is unusual); where pydensecrf crashes, segfaults or
returns NaN, the drop-in raises a ValueError. Each case runs the real pydensecrf when it is
installed (``pip install pydensecrf2``, part of the ``test`` extra) and always checks the
drop-in against an independent expectation; inputs that crash pydensecrf are not run there.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from deeplabv1.crf import densecrf as dcrf
from deeplabv1.crf import eigen, utils
from deeplabv1.crf.pydensecrf.checks import PydensecrfWarning

H, W, L = 6, 7, 3


def _real():
    """pydensecrf's densecrf and utils modules (the test skips without them)."""
    pd = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 not installed")
    import pydensecrf.utils as pu

    return pd, pu


def _case(seed: int = 0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    u = rng.normal(size=(L, H * W)).astype(np.float32)
    return img, u


def _crf(module, u, add):
    """A DenseCRF2D of ``module`` with unary u and the terms ``add(d)`` adds; Q after 5."""
    d = module.DenseCRF2D(W, H, u.shape[0])
    d.setUnaryEnergy(u)
    add(d)
    return np.array(d.inference(5))


def _quiet(fn, *args, **kwargs):
    """fn's result and the PydensecrfWarnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, [w for w in caught if issubclass(w.category, PydensecrfWarning)]


def test_module_names_match_pydensecrf():
    for name in ("DenseCRF", "DenseCRF2D", "Unary", "ConstUnary", "LogisticUnary", "KernelType",
                 "NormalizationType", "DIAG_KERNEL", "NORMALIZE_SYMMETRIC", "eigen"):  # fmt: skip
        assert hasattr(dcrf, name), name
    assert dcrf.eigen is eigen
    for name in ("unary_from_softmax", "softmax_to_unary", "unary_from_labels", "compute_unary",
                 "create_pairwise_gaussian", "create_pairwise_bilateral"):  # fmt: skip
        assert hasattr(utils, name), name
    try:
        pd, pu = _real()
    except pytest.skip.Exception:
        return
    public = {n for n in dir(pd) if not n.startswith("_")} - {"Number"}  # its own import
    assert public <= set(dir(dcrf)), public - set(dir(dcrf))
    public = {n for n in dir(pu) if not n.startswith("_") and callable(getattr(pu, n))}
    public -= {"Number", "warning"}  # pydensecrf's own imports
    assert public <= set(dir(utils)), public - set(dir(utils))


def test_eigen_conversions_are_as_strict_as_pydensecrf():
    rng = np.random.default_rng(0)
    v = rng.normal(size=3).astype(np.float32)
    m = rng.normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_array_equal(np.array(eigen.vectorXf(v)), v)
    np.testing.assert_array_equal(np.array(eigen.matrixXf(m)), m)
    assert np.array(eigen.MatrixXf()).shape == (0, 0)
    assert np.array(eigen.VectorXf()).shape == (0,)
    for bad, exc in [(m[None], ValueError), (m.astype(np.float64), ValueError),
                     (np.asfortranarray(m), ValueError), (None, TypeError),
                     (m.tolist(), TypeError)]:  # fmt: skip
        with pytest.raises(exc):
            eigen.matrixXf(bad)
    with pytest.raises(ValueError):
        eigen.vectorXf(m)


def test_deprecated_unary_helpers():
    labels = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    u, caught = _quiet(utils.compute_unary, labels, 3, GT_PROB=0.8)
    assert caught and "deprecated" in str(caught[0].message)
    m, p, n = 1 / 3, 0.8, 0.1  # unknown (label 0), positive, negative probabilities
    want = -np.log([[m, p, n, n, n, n, p, m], [m, n, p, n, n, p, n, m], [m, n, n, p, p, n, n, m]])
    np.testing.assert_allclose(u, want, rtol=1e-6)
    sm = np.array([[0.2, 0.5, 0.0], [0.8, 0.5, 1.0]])
    s, caught = _quiet(utils.softmax_to_unary, sm, GT_PROB=0.5)
    assert caught
    np.testing.assert_allclose(s, -np.log(0.5 * sm + 0.25), rtol=1e-6)
    s1, _ = _quiet(utils.softmax_to_unary, sm)  # GT_PROB=1: no scale, no clip: -log 0 = inf
    assert np.isposinf(s1[0, 2]) and s1.dtype == np.float32
    try:
        _, pu = _real()
    except pytest.skip.Exception:
        return
    np.testing.assert_array_equal(u, pu.compute_unary(labels, 3, GT_PROB=0.8))
    with np.errstate(divide="ignore"):
        np.testing.assert_array_equal(s1, pu.softmax_to_unary(sm))
    np.testing.assert_array_equal(s, pu.softmax_to_unary(sm, GT_PROB=0.5))


def _with_inf(u):
    v = u.copy()
    v[0, :10] = np.inf  # label 0 impossible on ten pixels: -log(0) of a saturated softmax
    v[2, 20] = np.inf
    return v


def test_plus_inf_unary_is_probability_zero():
    img, u = _case(1)
    v = _with_inf(u)

    def add(d):
        d.addPairwiseGaussian(sxy=2, compat=3)
        d.addPairwiseBilateral(sxy=5, srgb=20, rgbim=img, compat=4)

    q = _crf(dcrf, v, add)
    assert np.isfinite(q).all() and np.abs(q.sum(0) - 1).max() < 1e-5
    assert q[0, :10].max() < 1e-30 and q[2, 20] < 1e-30
    big = np.where(np.isinf(v), np.float32(1e4), v)  # a huge finite energy: the same Q
    np.testing.assert_allclose(q, _crf(dcrf, big, add), rtol=0, atol=1e-6)
    try:
        pd, _ = _real()
    except pytest.skip.Exception:
        return
    np.testing.assert_allclose(q, _crf(pd, v, add), rtol=0, atol=2e-5)


def test_inf_unary_that_gives_nan_is_an_error():
    _, u = _case(2)
    d = dcrf.DenseCRF2D(W, H, L)
    every = u.copy()
    every[:, 4] = np.inf
    for bad, match in [(every, "every label of pixel 4"), (-_with_inf(u), "-inf"),
                       (np.where(np.arange(H * W) == 3, np.nan, u), "NaN")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            d.setUnaryEnergy(bad)
    d.setUnaryEnergy(_with_inf(u))
    with pytest.raises(ValueError, match="klDivergence"):
        d.klDivergence(d.inference(1))


@pytest.mark.parametrize("labels", [3, 9])  # the scalar and the 8-lane kernel
def test_huge_energies_and_weights_keep_pydensecrfs_result(labels):
    """Energies above 1e30 (hand-made "forbidden" labels) and Potts weights of -1e29 and
    below: the label with the smallest energy still takes the pixel (the pairwise messages
    vanish in float32 rounding next to them), as in pydensecrf."""
    img, _ = _case(3)
    u = np.random.default_rng(3).normal(size=(labels, H * W)).astype(np.float32)
    v = u.copy()
    v[:, 0] = np.inf
    v[0, 0] = 1e31
    v[:, 1] = 3e30
    v[1, 1] = 1.5e30
    v[:, 2] = np.inf
    v[0, 2], v[2, 2] = np.float32(3.4e38), 1e38

    def add(d):
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=5, srgb=20, rgbim=img, compat=4)

    q = _crf(dcrf, v, add)
    np.testing.assert_allclose(q[:, :3], np.eye(labels)[:, :3], rtol=0, atol=1e-30)
    assert np.isfinite(q).all() and np.abs(q.sum(0) - 1).max() < 1e-5

    def potts(weight):
        return lambda d: d.addPairwiseGaussian(sxy=3, compat=weight, normalization=0)

    strong = _crf(dcrf, u, potts(-1e29))  # messages that dwarf the energies
    assert np.isfinite(strong).all() and np.abs(strong.sum(0) - 1).max() < 1e-5
    try:
        pd, _ = _real()
    except pytest.skip.Exception:
        return
    np.testing.assert_allclose(q, _crf(pd, v, add), rtol=0, atol=2e-5)
    np.testing.assert_allclose(strong, _crf(pd, u, potts(-1e29)), rtol=0, atol=1e-5)


def test_long_feature_ranges_keep_distant_points_apart():
    """A 1-D signal of 60,000 samples with sigma 1 spans more lattice units than pydensecrf's
    16-bit vertex keys hold: they wrap around and merge lattice points about 65k units apart,
    so its result on the first samples depends on samples far away. The drop-in keeps them
    apart (a deliberate difference); below the wrap-around both agree."""
    rng = np.random.default_rng(0)
    n, labels = 60000, 3
    u = np.ascontiguousarray(-np.log(rng.dirichlet(np.ones(labels), size=n).T), np.float32)
    f = np.arange(n, dtype=np.float32)[None]

    def run(module, m):
        d = module.DenseCRF(m, labels)
        d.setUnaryEnergy(np.ascontiguousarray(u[:, :m]))
        d.addPairwiseEnergy(np.ascontiguousarray(f[:, :m]), compat=5)
        return np.array(d.inference(5))

    ours, ours_short = run(dcrf, n), run(dcrf, 50000)
    np.testing.assert_array_equal(ours[:, :1000], ours_short[:, :1000])
    try:
        pd, _ = _real()
    except pytest.skip.Exception:
        return
    theirs, theirs_short = run(pd, n), run(pd, 50000)
    assert np.abs(theirs[:, :1000] - theirs_short[:, :1000]).max() > 0.5  # the wrap-around
    np.testing.assert_allclose(ours_short, theirs_short, rtol=0, atol=1e-4)


def test_negative_standard_deviations_flip_the_features():
    img, u = _case(3)

    def add(sign):
        def run(d):
            d.addPairwiseGaussian(sxy=(sign * 2, 3), compat=3)
            d.addPairwiseBilateral(sxy=sign * 10, srgb=(13, sign * 7, 20), rgbim=img, compat=4)

        return run

    q, caught = _quiet(_crf, dcrf, u, add(-1))
    assert len(caught) == 3 and "negative" in str(caught[0].message)  # sxy, sxy, srgb
    # the same CRF through explicitly negated features
    ys, xs = np.mgrid[0:H, 0:W]
    pos = np.stack([xs.ravel(), ys.ravel()]).astype(np.float32)
    gauss = pos / np.float32([[-2], [3]])
    bil = np.concatenate([pos / np.float32(-10),
                          img.reshape(-1, 3).T / np.float32([[13], [-7], [20]])])  # fmt: skip

    def explicit(d):
        d.addPairwiseEnergy(gauss, compat=3)
        d.addPairwiseEnergy(bil, compat=4)

    np.testing.assert_array_equal(q, _crf(dcrf, u, explicit))
    feats, caught = _quiet(utils.create_pairwise_bilateral, (-10, -10), (-13, -13, -13), img, 2)
    assert caught
    mesh = np.indices((H, W), dtype=np.float32)
    want = np.concatenate([mesh / np.float32(-10), np.moveaxis(img, 2, 0) / np.float32(-13)])
    np.testing.assert_array_equal(feats, want.reshape(5, -1))
    for zero in (0, (3, 0)):
        with pytest.raises(ValueError, match="non-zero"):
            dcrf.DenseCRF2D(W, H, L).addPairwiseGaussian(sxy=zero, compat=3)
    try:
        pd, pu = _real()
    except pytest.skip.Exception:
        return
    np.testing.assert_allclose(q, _crf(pd, u, add(-1)), rtol=0, atol=2e-5)
    np.testing.assert_array_equal(feats, pu.create_pairwise_bilateral((-10, -10), (-13,) * 3,
                                                                      img, 2))  # fmt: skip


def test_fewer_or_more_scales_than_pydensecrf_expects():
    img, u = _case(4)
    four = np.concatenate([img, img[..., :1]], 2)  # 4 channels
    feats, caught = _quiet(utils.create_pairwise_bilateral, (2, 3), (5,), four, 2)
    assert caught and "not scaled" in str(caught[0].message)
    mesh = np.indices((H, W), dtype=np.float32) / np.float32([2, 3])[:, None, None]
    chans = np.moveaxis(four, 2, 0).astype(np.float32)
    chans[0] /= np.float32(5)  # the others stay raw, as in pydensecrf
    np.testing.assert_array_equal(feats, np.concatenate([mesh, chans]).reshape(6, -1))
    axes, caught = _quiet(utils.create_pairwise_bilateral, (2,), 4, img, 2)
    assert caught and np.array_equal(axes[1], np.tile(np.arange(W, dtype=np.float32), H))
    with pytest.raises(ValueError, match="2 axes"):  # pydensecrf: (1, 2N), no use as features
        utils.create_pairwise_gaussian(sdims=(3,), shape=(H, W))
    with pytest.raises(ValueError, match="3 channels"):  # pydensecrf: IndexError
        utils.create_pairwise_bilateral((2, 3), (5, 5, 5, 5), img, 2)

    def extra(d):  # pydensecrf uses the first two / three values
        d.addPairwiseGaussian(sxy=(2, 3, 9), compat=3)
        d.addPairwiseBilateral(sxy=4, srgb=(5, 6, 7, 8), rgbim=img, compat=4)

    def exact(d):
        d.addPairwiseGaussian(sxy=(2, 3), compat=3)
        d.addPairwiseBilateral(sxy=4, srgb=(5, 6, 7), rgbim=img, compat=4)

    q, caught = _quiet(_crf, dcrf, u, extra)
    assert len(caught) == 2
    np.testing.assert_array_equal(q, _crf(dcrf, u, exact))
    for short in ((2,), [3]):
        with pytest.raises(ValueError, match="2 numbers"):  # pydensecrf: IndexError
            dcrf.DenseCRF2D(W, H, L).addPairwiseGaussian(sxy=short, compat=3)
    try:
        pd, pu = _real()
    except pytest.skip.Exception:
        return
    np.testing.assert_array_equal(feats, pu.create_pairwise_bilateral((2, 3), (5,), four, 2))
    np.testing.assert_array_equal(axes, pu.create_pairwise_bilateral((2,), 4, img, 2))
    np.testing.assert_allclose(q, _crf(pd, u, extra), rtol=0, atol=2e-5)
    bad = pu.create_pairwise_gaussian(sdims=(3,), shape=(H, W))
    assert bad.shape == (1, 2 * H * W)  # pydensecrf's result is not this grid's features
    with pytest.raises(ValueError):
        pd.DenseCRF2D(W, H, L).addPairwiseEnergy(bad, compat=3)


def test_unary_helpers_accept_what_pydensecrf_accepts():
    one, _ = _quiet(utils.unary_from_softmax, np.array([0.2, 0.8]))  # one pixel
    np.testing.assert_allclose(one, -np.log([[0.2], [0.8]]), rtol=1e-6)
    sm = np.array([[-0.1, 0.5], [1.1, 0.5]])
    clipped, caught = _quiet(utils.unary_from_softmax, sm)
    assert caught
    np.testing.assert_allclose(clipped, -np.log([[1e-5, 0.5], [1.0, 0.5]]), rtol=1e-6)
    for bad in (np.array([[np.nan, 0.5], [0.5, 0.5]]), sm):  # NaN; -log(-0.1) without clip
        with pytest.raises(ValueError, match="NaN"):
            _quiet(utils.unary_from_softmax, bad, clip=None)
    labels = np.array([0, 1, -1, 2])
    neg, caught = _quiet(utils.unary_from_labels, labels, 3, 0.7, zero_unsure=False)
    assert caught
    np.testing.assert_array_equal(neg[:, 2], neg[:, 3])  # -1: the last label
    bool_img = np.zeros((H, W), bool)
    bool_img[2:4, 1:5] = True
    feats = utils.create_pairwise_bilateral((2, 2), 0.5, bool_img)
    np.testing.assert_array_equal(feats[2], bool_img.ravel() * np.float32(2))
    onehot = np.array([[0, 1], [2, 1]])[None] == np.arange(3)[:, None, None]  # a bool mask
    mask_u = utils.unary_from_softmax(onehot)
    np.testing.assert_array_equal(mask_u, utils.unary_from_softmax(onehot.astype(np.float64)))
    # unsigned labels with 0 (a label PNG as read): 0 is "unsure", as for signed labels;
    # pydensecrf's labels - 1 wraps around there and indexes out of bounds (IndexError)
    lab8 = np.array([[0, 1], [2, 1]], np.uint8)
    signed = utils.unary_from_labels(lab8.astype(np.int64), 2, 0.7)
    np.testing.assert_array_equal(utils.unary_from_labels(lab8, 2, 0.7), signed)
    try:
        _, pu = _real()
    except pytest.skip.Exception:
        return
    np.testing.assert_array_equal(mask_u, pu.unary_from_softmax(onehot))
    with pytest.raises(IndexError):
        pu.unary_from_labels(lab8, 2, 0.7)
    np.testing.assert_array_equal(one, pu.unary_from_softmax(np.array([0.2, 0.8])))
    np.testing.assert_array_equal(clipped, pu.unary_from_softmax(sm))
    np.testing.assert_array_equal(neg, pu.unary_from_labels(labels, 3, 0.7, zero_unsure=False))
    np.testing.assert_array_equal(feats, pu.create_pairwise_bilateral((2, 2), 0.5, bool_img))
    for zero_unsure in (True, False):
        lab = np.random.default_rng(5).integers(0, 3, (H, W))
        np.testing.assert_array_equal(utils.unary_from_labels(lab, 3, 0.6, zero_unsure),
                                      pu.unary_from_labels(lab, 3, 0.6, zero_unsure))  # fmt: skip


def test_unusual_arguments_give_pydensecrf_results():
    img, u = _case(6)
    cases = {
        "negative iterations": (lambda d: d.inference(-1), lambda d: d.inference(0)),
        "normalization 7": (
            lambda d: (d.addPairwiseGaussian(sxy=3, compat=3, normalization=7), d.inference(3)),
            lambda d: (d.addPairwiseGaussian(sxy=3, compat=3, normalization=0), d.inference(3)),
        ),
        "kernel 7": (
            lambda d: (d.addPairwiseGaussian(sxy=3, compat=3, kernel=7), d.inference(3)),
            lambda d: (d.addPairwiseGaussian(sxy=3, compat=3), d.inference(3)),
        ),
        "infinite sxy": (
            lambda d: (d.addPairwiseGaussian(sxy=np.inf, compat=3), d.inference(3)),
            lambda d: (d.addPairwiseGaussian(sxy=1e30, compat=3), d.inference(3)),
        ),
        "sxy True": (
            lambda d: (d.addPairwiseGaussian(sxy=True, compat=3), d.inference(3)),
            lambda d: (d.addPairwiseGaussian(sxy=1, compat=3), d.inference(3)),
        ),
        "srgb True": (
            lambda d: (d.addPairwiseBilateral(sxy=3, srgb=True, rgbim=img, compat=4),
                       d.inference(3)),
            lambda d: (d.addPairwiseBilateral(sxy=3, srgb=1, rgbim=img, compat=4),
                       d.inference(3)),
        ),
        "compat True": (
            lambda d: (d.addPairwiseBilateral(sxy=3, srgb=9, rgbim=img, compat=True),
                       d.inference(3)),
            lambda d: (d.addPairwiseBilateral(sxy=3, srgb=9, rgbim=img, compat=1.0),
                       d.inference(3)),
        ),
    }  # fmt: skip
    try:
        pd = _real()[0]
    except pytest.skip.Exception:
        pd = None
    for name, (odd, plain) in cases.items():
        d = dcrf.DenseCRF2D(W, H, L)
        d.setUnaryEnergy(u)
        got, caught = _quiet(odd, d)
        assert caught, name
        d = dcrf.DenseCRF2D(W, H, L)
        d.setUnaryEnergy(u)
        want = plain(d)
        np.testing.assert_array_equal(
            np.array(got[-1] if isinstance(got, tuple) else got),
            np.array(want[-1] if isinstance(want, tuple) else want),
        )
        if pd is not None:
            d = pd.DenseCRF2D(W, H, L)
            d.setUnaryEnergy(u)
            theirs = odd(d)
            theirs = np.array(theirs[-1] if isinstance(theirs, tuple) else theirs)
            np.testing.assert_allclose(np.array(got[-1] if isinstance(got, tuple) else got),
                                       theirs, rtol=0, atol=2e-6, err_msg=name)  # fmt: skip
    _, caught = _quiet(dcrf.DenseCRF2D, W, H, L, 5, foo=3)  # pydensecrf swallows extras
    assert caught


def test_bool_image_is_colours_0_and_1():
    img, u = _case(8)
    mask = img > 100
    got = _crf(dcrf, u, lambda d: d.addPairwiseBilateral(3, 0.5, mask, 4))
    want = _crf(dcrf, u, lambda d: d.addPairwiseBilateral(3, 0.5, mask.astype(np.uint8), 4))
    np.testing.assert_array_equal(got, want)
    try:
        pd = _real()[0]
    except pytest.skip.Exception:
        return
    theirs = _crf(pd, u, lambda d: d.addPairwiseBilateral(3, 0.5, mask, 4))
    np.testing.assert_allclose(got, theirs, rtol=0, atol=2e-6)


def test_no_unary_and_logistic_unaries():
    _, u = _case(7)
    d = dcrf.DenseCRF2D(W, H, L)
    d.addPairwiseGaussian(sxy=3, compat=3)
    q, t1, t2 = d.startInference()
    assert np.all(q == 0) and isinstance(t1, eigen.MatrixXf)
    assert d.klDivergence(q) == 0.0
    d.stepInference(q, t1, t2)
    np.testing.assert_allclose(q, 1 / L, rtol=1e-6)
    np.testing.assert_allclose(d.inference(2), 1 / L, rtol=1e-6)
    f = np.random.default_rng(7).normal(size=(H * W, H * W)).astype(np.float32) / 10
    logistic = dcrf.DenseCRF2D(W, H, L)
    logistic.setUnaryEnergy(u, f)
    plain = dcrf.DenseCRF2D(W, H, L)
    plain.setUnaryEnergy(u @ f)
    np.testing.assert_array_equal(logistic.inference(0), plain.inference(0))
    k = np.random.default_rng(8).normal(size=(L, 4)).astype(np.float32)
    g = np.random.default_rng(9).normal(size=(4, H * W)).astype(np.float32)
    logistic.setUnary(dcrf.LogisticUnary(k, g))
    plain.setUnary(dcrf.ConstUnary(k @ g))
    np.testing.assert_array_equal(logistic.inference(1), plain.inference(1))
    plain.setUnary(dcrf.Unary())  # pydensecrf's empty unary: none at all
    np.testing.assert_allclose(plain.inference(0), 1 / L, rtol=1e-6)
    for bad in (lambda c: c.setUnaryEnergy(u, u),  # pydensecrf reads out of bounds
                lambda c: c.setUnary(dcrf.ConstUnary(np.ones((L, H * W + 1), np.float32))),
                lambda c: c.setUnary(dcrf.LogisticUnary(k, g[:3]))):  # fmt: skip
        with pytest.raises(ValueError, match="shape"):
            bad(dcrf.DenseCRF2D(W, H, L))
    empty = dcrf.DenseCRF(0, L)
    empty.addPairwiseEnergy(np.zeros((2, 0), np.float32), compat=3)
    assert empty.inference(3).shape == (L, 0)
    with pytest.raises(ValueError, match="nlabels"):  # pydensecrf: segmentation fault
        dcrf.DenseCRF(5, 0)
    try:
        pd, _ = _real()
    except pytest.skip.Exception:
        return
    theirs = pd.DenseCRF2D(W, H, L)
    theirs.addPairwiseGaussian(sxy=3, compat=3)
    tq, _, _ = theirs.startInference()
    assert np.all(np.array(tq) == 0) and theirs.klDivergence(tq) == 0.0
    theirs.setUnaryEnergy(u, f)
    np.testing.assert_allclose(np.array(theirs.inference(0)), logistic_q0(u @ f), atol=1e-6)
    assert np.array(pd.DenseCRF(0, L).inference(3)).shape == (L, 0)


def logistic_q0(energy):
    e = np.exp(-(energy - energy.min(0)))
    return e / e.sum(0)


@pytest.mark.parametrize("sxy", [0.5, 1.0, 1.5, 3.0])
def test_small_sxy_builds_pydensecrfs_lattice(voc_samples, sxy):
    """The embedding rounds as pydensecrf's SSE code does (float32 scale factors, products
    rounded before the subtraction, ties to even): with standard deviations of a pixel the
    residuals of many points nearly tie and any other rounding puts some of them in another
    simplex (up to 0.16 in Q before)."""
    pd, _ = _real()
    rgb = np.ascontiguousarray(voc_samples[3][1][100:200, 150:280])
    h, w, _ = rgb.shape
    u = (np.random.default_rng(0).normal(size=(5, h * w)) * 2).astype(np.float32)
    out = []
    for module in (dcrf, pd):
        d = module.DenseCRF2D(w, h, 5)
        d.setUnaryEnergy(u)
        d.addPairwiseGaussian(sxy=sxy, compat=3)
        d.addPairwiseBilateral(sxy=sxy, srgb=3, rgbim=rgb, compat=5)
        out.append(np.array(d.inference(5)))
    assert np.abs(out[0] - out[1]).max() < 3e-5  # the docs' bound (measured 5e-6 to 2.8e-5)


@pytest.mark.parametrize("labels", [2, 5, 21])
@pytest.mark.parametrize("norm", [0, 1, 2, 3])
def test_random_crfs_equal_pydensecrf(labels, norm):
    """Potts, diagonal and matrix compatibilities, every normalisation, the generic and the
    2-D API together: pydensecrf's marginals."""
    pd, pu = _real()
    rng = np.random.default_rng(labels + 10 * norm)
    h, w = 30, 41
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    u = (rng.normal(size=(labels, h * w)) * 2).astype(np.float32)
    diag = rng.normal(size=labels).astype(np.float32)
    mat = rng.normal(size=(labels, labels)).astype(np.float32)
    feats = pu.create_pairwise_bilateral((7, 9), (20, 30, 40), img, 2)
    out = []
    for module in (dcrf, pd):
        d = module.DenseCRF2D(w, h, labels)
        d.setUnaryEnergy(u)
        d.addPairwiseGaussian(sxy=3, compat=3, normalization=norm)
        d.addPairwiseBilateral(sxy=15, srgb=13, rgbim=img, compat=diag, normalization=norm)
        d.addPairwiseEnergy(feats, compat=mat, normalization=norm)
        out.append(np.array(d.inference(5)))
    np.testing.assert_allclose(out[0], out[1], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(out[0].argmax(0), out[1].argmax(0))  # docs: labels identical


def _ring_case():
    """pydensecrf's own test case: a 10 x 10 two-label unary (a ring and a centre square)
    and a bright square image."""
    ring = np.zeros((10, 10), np.float32)
    ring[:, [0, -1]] = ring[[0, -1], :] = 1
    centre = np.zeros((10, 10), np.float32)
    centre[4:7, 4:7] = 1
    prob = np.stack([ring.ravel(), centre.ravel()])
    prob = (prob + 1) / (prob.sum(0) + 2)
    img = np.zeros((10, 10, 3), np.uint8)
    img[2:8, 2:8] = 255
    return -np.log(prob), img


def test_pydensecrf_test_suite_cases():
    """The cases of pydensecrf's tests/ and pydensecrf/tests/ with the drop-in: the 2-D and
    the generic API agree; a wrongly sized unary raises at setUnaryEnergy (its issue 29); a
    float64 compatibility works (pydensecrf raises: a deliberate difference)."""
    u, img = _ring_case()
    a = dcrf.DenseCRF2D(10, 10, 2)
    a.setUnaryEnergy(u)
    a.addPairwiseBilateral(sxy=2, srgb=2, rgbim=img, compat=3)
    b = dcrf.DenseCRF(100, 2)
    b.setUnaryEnergy(u)
    b.addPairwiseEnergy(utils.create_pairwise_bilateral(sdims=(2, 2), schan=2, img=img, chdim=2),
                        compat=3)  # fmt: skip
    qa, qb = a.inference(10), b.inference(10)
    np.testing.assert_array_equal(qa.argmax(0), qb.argmax(0))
    big = dcrf.DenseCRF(69 * 51 * 72, 5)
    with pytest.raises(ValueError, match="Bad shape"):
        big.setUnaryEnergy(utils.unary_from_softmax(np.full((5, 68, 50), 0.2, np.float32)))
    c = dcrf.DenseCRF2D(10, 10, 2)
    c.setUnaryEnergy(np.ones((2, 100), np.float32))
    c.addPairwiseBilateral(sxy=(3, 3), srgb=(3, 3, 3), rgbim=np.zeros((10, 10, 3), np.uint8),
                           compat=np.array([1.0, 2.0]))  # fmt: skip
    assert np.isfinite(c.inference(2)).all()
    try:
        pd, _ = _real()
    except pytest.skip.Exception:
        return
    theirs = pd.DenseCRF2D(10, 10, 2)
    theirs.setUnaryEnergy(u)
    theirs.addPairwiseBilateral(sxy=2, srgb=2, rgbim=img, compat=3)
    np.testing.assert_allclose(qa, np.array(theirs.inference(10)), rtol=0, atol=1e-5)
    with pytest.raises(ValueError):  # pydensecrf's own test: float64 compat is rejected
        pd.DenseCRF2D(10, 10, 2).addPairwiseBilateral(
            sxy=(3, 3),
            srgb=(3, 3, 3),
            rgbim=np.zeros((10, 10, 3), np.uint8),
            compat=np.array([1.0, 2.0]),
        )


def test_non_rgb_example_and_kl_loop():
    """pydensecrf's non-RGB example (a one-channel image as bilateral features through the
    utils, stepwise inference with klDivergence; its issue 26 with four channels) on a small
    grid: the same marginals and KL values as pydensecrf."""
    h, w = 40, 48
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (2 * (h / 4) * (w / 4)))
    fg = 0.5 + 0.2 * ((blob - blob.min()) / (blob.max() - blob.min()) - 0.5)
    probs = np.stack([fg, 1 - fg])
    runs = []
    for channels in (1, 4):
        img = np.zeros((h, w, channels), np.uint8)
        img[h // 3 : 2 * h // 3, w // 4 : 3 * w // 4] = 1
        feats = utils.create_pairwise_bilateral(sdims=(10, 10), schan=0.01, img=img, chdim=2)
        runs.append((channels, feats))
    try:
        pd, _ = _real()
    except pytest.skip.Exception:
        pd = None
    for channels, feats in runs:
        out = []
        for module in (dcrf, pd) if pd is not None else (dcrf,):
            d = module.DenseCRF2D(w, h, 2)
            d.setUnaryEnergy(utils.unary_from_softmax(probs))
            d.addPairwiseEnergy(feats, compat=10)
            q, t1, t2 = d.startInference()
            kls = []
            for _ in range(5):
                d.stepInference(q, t1, t2)
                kls.append(d.klDivergence(q) / (h * w))
            out.append((np.array(q), kls, np.array(d.inference(20))))
        q, kls, q20 = out[0]
        assert np.all(np.diff(kls) <= 1e-6), channels  # mean field lowers the KL divergence
        inside = q20.argmax(0).reshape(h, w)[
            h // 3 + 2 : 2 * h // 3 - 2, w // 4 + 2 : 3 * w // 4 - 2
        ]
        assert (inside == 0).all()  # the square of the image is foreground
        if pd is not None:
            tq, tkls, tq20 = out[1]
            np.testing.assert_allclose(q, tq, rtol=0, atol=1e-5)
            np.testing.assert_allclose(kls, tkls, rtol=1e-4)
            np.testing.assert_allclose(q20, tq20, rtol=0, atol=1e-5)


def _network_scores(labels: np.ndarray, num_labels: int) -> np.ndarray:
    """What a network gives (benchmarks/crf_bench.py's reference unary): 8 x the one-hot
    labels pooled to stride 8, plus noise, bilinearly upsampled to the image."""
    from PIL import Image

    h, w = labels.shape
    rng = np.random.default_rng(0)
    onehot = np.eye(num_labels, dtype=np.float32)[labels % num_labels].transpose(2, 0, 1)
    h8, w8 = -(-h // 8), -(-w // 8)
    pad = np.zeros((num_labels, h8 * 8, w8 * 8), np.float32)
    pad[:, :h, :w] = onehot
    low = 8.0 * pad.reshape(num_labels, h8, 8, w8, 8).mean((2, 4))
    low += rng.normal(scale=1.0, size=low.shape).astype(np.float32)
    return np.stack([np.asarray(Image.fromarray(c, mode="F").resize((w, h), Image.BILINEAR))
                     for c in low]).astype(np.float32)  # fmt: skip


def _image_crf(module, rgb, u, sg, wg, sa, sb, wb, norm, iters=10):
    h, w, _ = rgb.shape
    d = module.DenseCRF2D(w, h, u.shape[0])
    d.setUnaryEnergy(u)
    d.addPairwiseGaussian(sxy=sg, compat=wg, normalization=norm)
    d.addPairwiseBilateral(sxy=sa, srgb=sb, rgbim=rgb, compat=wb, normalization=norm)
    return np.array(d.inference(iters))


def test_reference_case_equals_pydensecrf(voc_samples):
    """docs/crf.md's reference case (VOC 2007_000346, 500x375, 21 labels, LargeFOV
    parameters, "after", 10 iterations, a network-like unary): max |dQ| 5e-7 against
    pydensecrf2 and identical labels, on one and on two threads."""
    from deeplabv1.crf.engine import threads as engine_threads

    pd, _ = _real()
    sid, rgb, lab = voc_samples[3]
    assert sid == "2007_000346" and rgb.shape == (375, 500, 3)
    rgb = np.array(rgb)  # pydensecrf needs a writable buffer
    u = np.ascontiguousarray(-_network_scores(lab.astype(np.int64), 21).reshape(21, -1))
    args = (3, 3, 121, 5, 4, dcrf.NORMALIZE_AFTER)
    theirs = _image_crf(pd, rgb, u, *args)
    before = engine_threads.get_num_threads()
    try:
        for threads in (1, 2):
            engine_threads.set_num_threads(threads)
            ours = _image_crf(dcrf, rgb, u, *args)
            assert np.abs(ours - theirs).max() <= 5e-7, threads  # measured 4.8e-7
            np.testing.assert_array_equal(ours.argmax(0), theirs.argmax(0))
    finally:
        engine_threads.set_num_threads(before)


def test_whole_images_every_normalization(voc_samples):
    """Whole VOC images with a near-uniform unary (many near-ties), Gaussian 3 / 3 and
    bilateral 80 / 13 / 10, 10 iterations. The normalised modes: pydensecrf's labels, Q to
    float32 rounding (below 3e-5; measured 2.6e-5), and one thread against two the same
    labels with Q within 2e-6. NO_NORMALIZATION: logits of 1e4-1e5, so float32 rounding moves
    Q on near-tie pixels, against pydensecrf and between thread counts alike (docs/crf.md)."""
    from deeplabv1.crf.engine import threads as engine_threads

    pd, _ = _real()
    before = engine_threads.get_num_threads()
    try:
        for index in (1, 2):  # 2007_000129 (500x334), 2007_000332 (333x500)
            rgb = np.array(voc_samples[index][1])
            h, w, _ = rgb.shape
            u = (np.random.default_rng(0).random((21, h * w)) * 3).astype(np.float32)
            for norm in (0, 1, 2, 3):
                args = (3, 3, 80, 13, 10, norm)
                theirs = _image_crf(pd, rgb, u, *args)
                engine_threads.set_num_threads(1)
                one = _image_crf(dcrf, rgb, u, *args)
                engine_threads.set_num_threads(2)
                two = _image_crf(dcrf, rgb, u, *args)
                if norm == dcrf.NO_NORMALIZATION:  # measured: <= 0.084, <= 2 pixels
                    assert np.abs(one - theirs).max() < 0.15
                    assert (one.argmax(0) != theirs.argmax(0)).sum() <= 10
                    assert (one.argmax(0) != two.argmax(0)).sum() <= 10
                    continue
                assert np.abs(one - theirs).max() < 3e-5, (index, norm)
                np.testing.assert_array_equal(one.argmax(0), theirs.argmax(0))
                assert np.abs(one - two).max() < 2e-6, (index, norm)  # measured 1.3e-6
                np.testing.assert_array_equal(one.argmax(0), two.argmax(0))
    finally:
        engine_threads.set_num_threads(before)


def test_more_rows_of_the_input_table():
    """Rows of docs/crf.md's table not covered above: too few srgb values and more sdims
    than axes (pydensecrf: IndexError), an empty 2-D grid, negative sizes, NaN or infinite
    compatibilities, features and standard deviations (ValueError), and compatibilities so
    large that unnormalised messages overflow float32 (pydensecrf: NaN; the drop-in: finite
    marginals)."""
    img, u = _case(9)
    with pytest.raises(ValueError, match="3 numbers"):
        dcrf.DenseCRF2D(W, H, L).addPairwiseBilateral(sxy=3, srgb=(3, 4), rgbim=img, compat=3)
    for make in (lambda ut: ut.create_pairwise_bilateral((2, 3, 4), 5, img, 2),
                 lambda ut: ut.create_pairwise_gaussian((2, 3, 4), (H, W))):  # fmt: skip
        with pytest.raises(ValueError, match="3 values for 2 axes"):
            make(utils)
    assert dcrf.DenseCRF2D(0, H, L).inference(2).shape == (L, 0)
    for bad in (lambda: dcrf.DenseCRF(-1, L), lambda: dcrf.DenseCRF2D(-1, H, L),
                lambda: dcrf.DenseCRF2D(W, -1, L)):  # fmt: skip
        with pytest.raises(ValueError):
            bad()
    feats = np.random.default_rng(9).random((2, H * W)).astype(np.float32)
    nan_feats = feats.copy()
    nan_feats[1, 3] = np.nan
    for bad in (lambda d: d.addPairwiseGaussian(sxy=3, compat=np.nan),
                lambda d: d.addPairwiseGaussian(sxy=3, compat=np.inf),
                lambda d: d.addPairwiseGaussian(sxy=3, compat=np.array([1, np.nan, 2])),
                lambda d: d.addPairwiseEnergy(nan_feats, compat=3),
                lambda d: d.addPairwiseEnergy(feats * np.inf, compat=3),
                lambda d: d.addPairwiseGaussian(sxy=np.nan, compat=3),
                lambda d: d.addPairwiseBilateral(sxy=3, srgb=(5, np.nan, 5), rgbim=img,
                                                 compat=3),
                lambda d: d.addPairwiseGaussian(sxy=3, compat=np.ones((L, L + 1)))):  # fmt: skip
        with pytest.raises(ValueError):
            bad(dcrf.DenseCRF2D(W, H, L))

    def overflow(d):
        d.addPairwiseGaussian(sxy=3, compat=np.float32(1e38), normalization=0)

    q = _crf(dcrf, u, overflow)
    assert np.isfinite(q).all() and np.abs(q.sum(0) - 1).max() < 1e-5
    try:
        pd, pu = _real()
    except pytest.skip.Exception:
        return
    with pytest.raises(IndexError):
        pd.DenseCRF2D(W, H, L).addPairwiseBilateral(sxy=3, srgb=(3, 4), rgbim=img, compat=3)
    for make in (lambda ut: ut.create_pairwise_bilateral((2, 3, 4), 5, img, 2),
                 lambda ut: ut.create_pairwise_gaussian((2, 3, 4), (H, W))):  # fmt: skip
        with pytest.raises(IndexError):
            make(pu)
    assert np.array(pd.DenseCRF2D(0, H, L).inference(2)).shape == (L, 0)
    assert np.isnan(_crf(pd, u, overflow)).any()
