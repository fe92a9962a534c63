"""Terms and CRFs that share one cached lattice: two terms with equal features in one CRF,
and CRFs of equal-size images in several threads, each with their own buffers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from deeplabv1.crf import CRFParams, deeplab_crf_np
from deeplabv1.crf import densecrf as dcrf

W, H, L = 7, 5, 3


def _case(seed: int = 0):
    rng = np.random.default_rng(seed)
    u = (rng.random((L, W * H)) * 3).astype(np.float32)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return u, img


def _q(module, add, generic: bool = False):
    u, img = _case()
    d = module.DenseCRF(W * H, L) if generic else module.DenseCRF2D(W, H, L)
    d.setUnaryEnergy(u)
    add(module, d, img)
    return np.array(d.inference(5))


def _gauss_twice(m, d, img):
    d.addPairwiseGaussian(3, 1)
    d.addPairwiseGaussian(3, 1)


def _energy_twice(m, d, img):
    f = np.random.default_rng(1).random((2, W * H)).astype(np.float32) * 3
    d.addPairwiseEnergy(f, 1)
    d.addPairwiseEnergy(f.copy(), 1)


def _bilateral_two_norms(m, d, img):
    d.addPairwiseBilateral(5, 13, img, 3, normalization=m.NORMALIZE_BEFORE)
    d.addPairwiseBilateral(5, 13, img, 2, normalization=m.NORMALIZE_SYMMETRIC)


CASES = {"gaussian": _gauss_twice, "energy": _energy_twice, "bilateral": _bilateral_two_norms}


@pytest.mark.parametrize(
    "name, generic",
    [("gaussian", False), ("energy", False), ("energy", True), ("bilateral", False)],
)
def test_equal_features_twice_match_pydensecrf(name, generic):
    pd = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 not installed")
    ours = _q(dcrf, CASES[name], generic)
    np.testing.assert_allclose(ours, _q(pd, CASES[name], generic), atol=2e-5)


def test_equal_features_twice_equal_one_term_of_double_weight():
    """Independent of pydensecrf: two equal Potts terms are one term of the summed weight."""
    once = _q(dcrf, lambda m, d, img: d.addPairwiseGaussian(3, 2))
    np.testing.assert_allclose(_q(dcrf, _gauss_twice), once, atol=2e-6)


def test_torch_mean_field_equal_terms():
    torch = pytest.importorskip("torch")
    from deeplabv1.crf.torch.meanfield import PairwiseTerm, mean_field

    u, _ = _case()
    unary = torch.from_numpy(u).unsqueeze(0)
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    feats = (torch.stack([xx, yy], -1).reshape(1, -1, 2) / 3.0).float()
    two = mean_field(unary, [PairwiseTerm(feats, 1.0), PairwiseTerm(feats.clone(), 1.0)], 5)
    one = mean_field(unary, [PairwiseTerm(feats, 2.0)], 5)
    assert float((one - two).abs().max()) < 2e-6


def _dropin_job(seed: int):
    rng = np.random.default_rng(seed)
    u = (rng.random((5, 40 * 30)) * 3).astype(np.float32)
    img = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    d = dcrf.DenseCRF2D(40, 30, 5)
    d.setUnaryEnergy(u)
    d.addPairwiseGaussian(3, 3)
    d.addPairwiseBilateral(50, 13, img, 5)
    return np.array(d.inference(5))


def _deeplab_job(seed: int):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(5, 30, 40)).astype(np.float32)
    img = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    return deeplab_crf_np(scores, img, CRFParams(4, 60, 5, 3, 3), iters=5)


@pytest.mark.parametrize("job", [_dropin_job, _deeplab_job])
def test_concurrent_crfs_equal_sequential_ones(job):
    """Equal-size images share the cached Gaussian lattice; threads must not mix buffers."""
    seq = [job(s) for s in range(8)]
    with ThreadPoolExecutor(4) as ex:
        par = list(ex.map(job, range(8)))
    for a, b in zip(seq, par):
        np.testing.assert_array_equal(a, b)
