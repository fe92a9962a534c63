"""The pydensecrf drop-in: same API and results; pydensecrf's own examples reproduced."""

from __future__ import annotations

import numpy as np
import pytest
from test_crf_meanfield import np_mean_field

from deeplabv1.crf import densecrf as dcrf
from deeplabv1.crf import utils


def _random_case(rng, w=7, h=5, num_labels=3):
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    u = rng.normal(size=(num_labels, w * h)).astype(np.float32) * 2
    return img, u


def test_constants_and_names():
    assert (dcrf.CONST_KERNEL, dcrf.DIAG_KERNEL, dcrf.FULL_KERNEL) == (0, 1, 2)
    assert (dcrf.NO_NORMALIZATION, dcrf.NORMALIZE_BEFORE) == (0, 1)
    assert (dcrf.NORMALIZE_AFTER, dcrf.NORMALIZE_SYMMETRIC) == (2, 3)
    assert dcrf.KernelType.DIAG_KERNEL is dcrf.DIAG_KERNEL
    assert dcrf.NormalizationType(3) is dcrf.NORMALIZE_SYMMETRIC


MODES = {
    dcrf.NO_NORMALIZATION: "none",
    dcrf.NORMALIZE_BEFORE: "before",
    dcrf.NORMALIZE_AFTER: "after",
    dcrf.NORMALIZE_SYMMETRIC: "symmetric",
}


@pytest.mark.parametrize("norm", list(MODES))
def test_2d_api_matches_numpy_reference(norm):
    rng = np.random.default_rng(0)
    img, u = _random_case(rng)
    diag = rng.normal(size=3).astype(np.float32)
    d = dcrf.DenseCRF2D(7, 5, 3, method="dense")
    d.setUnaryEnergy(u)
    d.addPairwiseGaussian(sxy=(2, 3), compat=dcrf.DiagonalCompatibility(diag), normalization=norm)
    d.addPairwiseBilateral(sxy=4, srgb=(30, 40, 50), rgbim=img, compat=5, normalization=norm)
    q = d.inference(3)
    assert q.shape == (3, 35) and q.dtype == np.float32
    ys, xs = np.mgrid[0:5, 0:7]
    pos = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    f1 = pos / [2, 3]
    f2 = np.concatenate([pos / 4, img.reshape(-1, 3) / [30, 40, 50]], 1)
    ref = np_mean_field(u, [f1, f2], [diag, 5.0], [MODES[norm]] * 2, 3)
    np.testing.assert_allclose(q, ref, atol=2e-5)


def test_generic_api_with_utils_equals_2d_api():
    rng = np.random.default_rng(1)
    img, u = _random_case(rng, w=6, h=4)
    m = rng.normal(size=(3, 3))
    a = dcrf.DenseCRF2D(6, 4, 3, method="dense")
    a.setUnaryEnergy(u)
    a.addPairwiseGaussian(sxy=3, compat=3)
    a.addPairwiseBilateral(sxy=5, srgb=20, rgbim=img, compat=m)
    b = dcrf.DenseCRF(24, 3, method="dense")
    b.setUnaryEnergy(u)
    b.addPairwiseEnergy(utils.create_pairwise_gaussian(sdims=(3, 3), shape=(4, 6)), compat=3)
    feats = utils.create_pairwise_bilateral(sdims=(5, 5), schan=(20, 20, 20), img=img, chdim=2)
    b.addPairwiseEnergy(feats, compat=dcrf.MatrixCompatibility(m))
    np.testing.assert_allclose(a.inference(4), b.inference(4), atol=1e-6)


def test_step_inference_and_kl_divergence():
    rng = np.random.default_rng(2)
    img, u = _random_case(rng)
    d = dcrf.DenseCRF2D(7, 5, 3, method="dense")
    d.setUnaryEnergy(u)
    d.addPairwiseBilateral(sxy=3, srgb=30, rgbim=img, compat=4)
    q, tmp1, tmp2 = d.startInference()
    np.testing.assert_allclose(q, np.exp(-u) / np.exp(-u).sum(0), atol=1e-6)
    for _ in range(3):
        d.stepInference(q, tmp1, tmp2)
    np.testing.assert_allclose(q, d.inference(3), atol=1e-6)
    # KL = sum Q log Q + sum U Q - sum Q * (w * normalised K Q) for one Potts term
    ys, xs = np.mgrid[0:5, 0:7]
    f = np.concatenate([np.stack([xs.ravel(), ys.ravel()], 1) / 3, img.reshape(-1, 3) / 30], 1)
    k = np.exp(-0.5 * ((f[:, None] - f[None]) ** 2).sum(-1))
    n = 1 / np.sqrt(k.sum(1))
    qd = q.astype(np.float64)
    expect = (qd * np.log(qd)).sum() + (u * qd).sum() - (qd * 4 * n * ((n * qd) @ k.T)).sum()
    assert d.klDivergence(q) == pytest.approx(expect, rel=1e-5)


def test_accepts_float64_and_noncontiguous():
    rng = np.random.default_rng(3)
    img, u = _random_case(rng)

    def run(unary, image):
        d = dcrf.DenseCRF2D(7, 5, 3, method="dense")
        d.setUnaryEnergy(unary)
        d.addPairwiseBilateral(sxy=3, srgb=30, rgbim=image, compat=4)
        return d.inference(2)

    base = run(u, img)
    u_odd = np.asfortranarray(u.astype(np.float64))
    img_odd = np.ascontiguousarray(img[:, ::-1])[:, ::-1]  # a negative-stride view, same pixels
    assert not img_odd.flags.c_contiguous and not u_odd.flags.c_contiguous
    np.testing.assert_allclose(run(u_odd, img_odd), base, atol=1e-6)
    np.testing.assert_allclose(run(u, img.astype(np.float64)), base, atol=1e-6)


def test_rejects_nonsense():
    """Inputs that crash pydensecrf (or make it return NaN) raise a ValueError naming the
    problem."""
    rng = np.random.default_rng(4)
    img, u = _random_case(rng)
    d = dcrf.DenseCRF2D(7, 5, 3, method="dense")
    with pytest.raises(ValueError, match="shape"):
        d.setUnaryEnergy(u[:, :-1])
    with pytest.raises(ValueError, match="shape"):
        d.setUnaryEnergy(u.T)
    for bad in (np.nan, -np.inf):
        v = u.copy()
        v[1, 2] = bad
        with pytest.raises(ValueError, match="NaN or -inf"):
            d.setUnaryEnergy(v)
    with pytest.raises(ValueError, match="non-zero"):
        d.addPairwiseGaussian(sxy=0, compat=3)
    with pytest.raises(ValueError, match="non-zero"):
        d.addPairwiseBilateral(sxy=3, srgb=(13, 0, 13), rgbim=img, compat=3)
    with pytest.raises(ValueError, match="Bad shape"):
        d.addPairwiseBilateral(sxy=3, srgb=13, rgbim=img[:4], compat=3)
    with pytest.raises(ValueError, match="uint8"):
        d.addPairwiseBilateral(sxy=3, srgb=13, rgbim=img / 255.0, compat=3)
    with pytest.raises(ValueError, match="compat"):
        d.addPairwiseGaussian(sxy=3, compat=np.ones(4))
    with pytest.raises(ValueError, match="Bad shape"):
        d.addPairwiseEnergy(np.ones((2, 34), np.float32), compat=3)
    with pytest.raises(ValueError, match="normalization"):
        d.addPairwiseGaussian(sxy=3, compat=3, normalization="symmetric")


def test_utils_by_hand():
    u = utils.unary_from_labels(np.array([[0, 1], [2, 2]]), 2, gt_prob=0.8)
    lo, hi, uni = -np.log(0.8), -np.log(0.2), np.log(2.0)
    np.testing.assert_allclose(u, [[uni, lo, hi, hi], [uni, hi, lo, lo]], rtol=1e-6)
    u = utils.unary_from_labels(np.array([0, 2]), 3, gt_prob=0.5, zero_unsure=False)
    np.testing.assert_allclose(u, -np.log([[0.5, 0.25], [0.25, 0.25], [0.25, 0.5]]), rtol=1e-6)
    sm = np.array([[[1.0, 0.25]], [[0.0, 0.75]]])  # (2 classes, 1, 2)
    np.testing.assert_allclose(
        utils.unary_from_softmax(sm), -np.log([[1, 0.25], [1e-5, 0.75]]), rtol=1e-5
    )
    np.testing.assert_allclose(
        utils.unary_from_softmax(sm, scale=0.5), -np.log([[0.75, 0.375], [0.25, 0.625]]), rtol=1e-6
    )
    g = utils.create_pairwise_gaussian(sdims=(2, 4), shape=(2, 3))
    np.testing.assert_allclose(g, [[0, 0, 0, 0.5, 0.5, 0.5], [0, 0.25, 0.5, 0, 0.25, 0.5]])
    img = np.arange(12, dtype=np.uint8).reshape(2, 2, 3) * 10
    b = utils.create_pairwise_bilateral(sdims=(1, 2), schan=(10, 20, 40), img=img, chdim=2)
    assert b.shape == (5, 4) and b.dtype == np.float32
    np.testing.assert_allclose(b[:, 3], [1, 0.5, 9, 5, 2.75])
    with pytest.raises(ValueError, match="gt_prob"):
        utils.unary_from_labels(np.array([1]), 2, gt_prob=1.0)
    with pytest.raises(ValueError, match="labels"):
        utils.unary_from_labels(np.array([3]), 2, gt_prob=0.5)


def _decode_annotation(path):
    """pydensecrf's examples/inference.py: colours -> 1..n labels, black (0) = unknown."""
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.uint32)
    code = rgb[..., 0] + (rgb[..., 1] << 8) + (rgb[..., 2] << 16)
    colors, labels = np.unique(code, return_inverse=True)
    has_unknown = bool(colors[0] == 0)
    if has_unknown:
        colors = colors[1:]
    palette = np.stack([colors & 255, (colors >> 8) & 255, (colors >> 16) & 255], 1)
    return labels.reshape(code.shape), len(colors), has_unknown, palette.astype(np.uint8)


def _run_example(module, util, img, labels, n, has_unknown):
    """pydensecrf's examples/inference.py with ``module`` / ``util``: Q after 5 iterations
    and the KL divergences of its stepwise loop (startInference, then 5 x klDivergence and
    stepInference)."""
    d = module.DenseCRF(img.shape[0] * img.shape[1], n)
    d.setUnaryEnergy(util.unary_from_labels(labels, n, gt_prob=0.7, zero_unsure=has_unknown))
    feats = util.create_pairwise_gaussian(sdims=(3, 3), shape=img.shape[:2])
    d.addPairwiseEnergy(feats, compat=3, kernel=module.DIAG_KERNEL,
                        normalization=module.NORMALIZE_SYMMETRIC)  # fmt: skip
    feats = util.create_pairwise_bilateral(sdims=(80, 80), schan=(13, 13, 13), img=img, chdim=2)
    d.addPairwiseEnergy(feats, compat=10, kernel=module.DIAG_KERNEL,
                        normalization=module.NORMALIZE_SYMMETRIC)  # fmt: skip
    q = np.array(d.inference(5))
    qs, tmp1, tmp2 = d.startInference()
    kls = []
    for _ in range(5):
        kls.append(d.klDivergence(qs))
        d.stepInference(qs, tmp1, tmp2)
    return q, np.array(kls)


@pytest.mark.parametrize("index", [1, 2, 3])
def test_reproduces_pydensecrf_examples(shared_data, index):
    """examples/inference.py settings (data README): gt_prob 0.7, Gaussian sxy 3 compat 3,
    bilateral sxy 80 srgb 13 compat 10, 5 iterations, symmetric normalisation. The docs: the
    same PNGs as pydensecrf2 and as the stored outputs (100% of pixels), KL values within 3e-5
    relative of pydensecrf2's (measured 2.1e-5: pydensecrf sums them in float32)."""
    from PIL import Image

    folder = shared_data / "densecrf_examples"
    img = np.array(Image.open(folder / f"im{index}.png").convert("RGB"))
    labels, n, has_unknown, palette = _decode_annotation(folder / f"anno{index}.png")
    q, kls = _run_example(dcrf, utils, img, labels, n, has_unknown)
    out = palette[np.argmax(q, axis=0)].reshape(img.shape)
    expected = np.asarray(Image.open(folder / f"out{index}.png").convert("RGB"))
    agree = (out == expected).all(-1).mean()
    assert agree == 1.0, f"only {agree:.2%} of pixels match out{index}.png"
    assert np.all(np.diff(kls) < 0)  # mean field lowers the KL divergence
    try:
        pd = pytest.importorskip("pydensecrf.densecrf")
        import pydensecrf.utils as pu
    except pytest.skip.Exception:
        return
    theirs, their_kls = _run_example(pd, pu, img, labels, n, has_unknown)
    np.testing.assert_array_equal(np.argmax(q, axis=0), np.argmax(theirs, axis=0))
    np.testing.assert_allclose(kls, their_kls, rtol=3e-5)


@pytest.mark.parametrize("norm", [dcrf.NORMALIZE_SYMMETRIC, dcrf.NORMALIZE_AFTER])
def test_matches_pydensecrf_directly(norm):
    pd = pytest.importorskip("pydensecrf.densecrf")
    rng = np.random.default_rng(5)
    h, w, num_labels = 30, 40, 4
    img = np.zeros((h, w, 3), np.uint8)
    img[8:22, 10:30] = 200
    img = (img + rng.integers(0, 30, img.shape)).astype(np.uint8)
    u = rng.normal(size=(num_labels, h * w)).astype(np.float32) * 1.5
    diag = -np.arange(1, num_labels + 1, dtype=np.float32)

    def run(module):
        d = module.DenseCRF2D(w, h, num_labels)
        d.setUnaryEnergy(u)
        d.addPairwiseGaussian(sxy=3, compat=3, normalization=norm)
        d.addPairwiseBilateral(sxy=20, srgb=13, rgbim=img, compat=diag, normalization=norm)
        return np.array(d.inference(5))

    ours, theirs = run(dcrf), run(pd)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
