"""Mean-field inference against an independent numpy implementation with the exact kernel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import requires_cuda

from deeplabv1.crf.torch.features import bilateral_features, gaussian_features
from deeplabv1.crf.torch.meanfield import PairwiseTerm, mean_field


def np_mean_field(unary, feats_list, compats, modes, iters):
    """Reference: unary (L, N), features (N, d) per term, float64, exact O(N^2) kernels."""
    u = unary.astype(np.float64)

    def softmax(m):
        e = np.exp(m - m.max(0, keepdims=True))
        return e / e.sum(0, keepdims=True)

    kernels = []
    for f in feats_list:
        d2 = ((f[:, None, :].astype(np.float64) - f[None, :, :]) ** 2).sum(-1)
        kernels.append(np.exp(-0.5 * d2))
    q = softmax(-u)
    for _ in range(iters):
        m = -u.copy()
        for k, c, mode in zip(kernels, compats, modes):
            k1 = k.sum(1)
            if mode == "symmetric":
                n = 1 / np.sqrt(k1 + 1e-20)
                filt = n * ((n * q) @ k.T)
            elif mode == "after":
                filt = (q @ k.T) / (k1 + 1e-20)
            elif mode == "before":
                filt = (q / (k1 + 1e-20)) @ k.T
            else:
                filt = q @ k.T
            if np.ndim(c) == 0:
                m += c * filt  # Potts: negated energy
            elif np.ndim(c) == 1:
                m -= c[:, None] * filt
            else:
                m -= 0.5 * (c + c.T) @ filt
        q = softmax(m)
    return q


def _case(rng, b=2, h=5, w=6, num_labels=3):
    img = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
    unary = rng.normal(size=(b, num_labels, h * w)).astype(np.float32) * 2
    feats = [
        gaussian_features(h, w, 2.0, b),
        bilateral_features(img, (3.0, 4.0), (40.0, 50.0, 60.0)),
    ]
    return unary, feats


COMPATS = {
    "potts": lambda rng, n: 3.0,
    "diag": lambda rng, n: rng.normal(size=n).astype(np.float32),
    "matrix": lambda rng, n: rng.normal(size=(n, n)).astype(np.float32),
}


@pytest.mark.parametrize("mode", ["symmetric", "after", "before", "none"])
@pytest.mark.parametrize("kind", sorted(COMPATS))
def test_matches_numpy_reference(mode, kind):
    rng = np.random.default_rng(1)
    unary, feats = _case(rng)
    c1, c2 = COMPATS[kind](rng, 3), 2.0
    terms = [PairwiseTerm(feats[0], c2, mode), PairwiseTerm(feats[1], c1, mode)]
    q = mean_field(torch.from_numpy(unary), terms, iters=4, method="dense").numpy()
    for b in range(unary.shape[0]):
        ref = np_mean_field(unary[b], [f[b].numpy() for f in feats], [c2, c1], [mode] * 2, 4)
        np.testing.assert_allclose(q[b], ref, atol=2e-5)


def test_three_pixels_by_hand():
    # 3 pixels on a line (features 0, 1, 3), 2 labels, one Potts term w = 2, "after", 1 iteration.
    feats = torch.tensor([[[0.0], [1.0], [3.0]]])
    unary = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]]])
    q = mean_field(unary, [PairwiseTerm(feats, 2.0, "after")], iters=1, method="dense")
    e1, e4, e9 = math.exp(-0.5), math.exp(-2.0), math.exp(-4.5)
    p0 = [1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1)), 1 / (1 + math.exp(2))]  # Q_0 label 0
    # pixel 0: kernel row (1, e^-1/2, e^-9/2)
    f0 = (p0[0] + e1 * p0[1] + e9 * p0[2]) / (1 + e1 + e9)
    f1 = ((1 - p0[0]) + e1 * (1 - p0[1]) + e9 * (1 - p0[2])) / (1 + e1 + e9)
    m0, m1 = -0.0 + 2 * f0, -1.0 + 2 * f1
    expect = math.exp(m0) / (math.exp(m0) + math.exp(m1))
    assert q[0, 0, 0].item() == pytest.approx(expect, abs=1e-6)
    # pixel 2: kernel row (e^-9/2, e^-2, 1)
    g0 = (e9 * p0[0] + e4 * p0[1] + p0[2]) / (e9 + e4 + 1)
    m0, m1 = -2.0 + 2 * g0, 0.0 + 2 * (1 - g0)
    assert q[0, 0, 2].item() == pytest.approx(1 / (1 + math.exp(m1 - m0)), abs=1e-6)


@pytest.mark.parametrize("mode", ["symmetric", "after"])
def test_potts_equals_paper_form(mode):
    """Potts w == the energy matrix w * [l != l'] (a per-pixel constant apart)."""
    rng = np.random.default_rng(2)
    unary, feats = _case(rng, num_labels=4)
    u = torch.from_numpy(unary)
    potts = mean_field(u, [PairwiseTerm(feats[1], 3.0, mode)], iters=5, method="dense")
    mat = 3.0 * (1 - torch.eye(4))
    paper = mean_field(u, [PairwiseTerm(feats[1], mat, mode)], iters=5, method="dense")
    torch.testing.assert_close(potts, paper, atol=1e-5, rtol=0)


def test_zero_iterations_is_softmax_and_batch_is_per_image():
    rng = np.random.default_rng(3)
    unary, feats = _case(rng)
    u = torch.from_numpy(unary)
    q0 = mean_field(u, [PairwiseTerm(feats[0], 3.0)], iters=0, method="dense")
    torch.testing.assert_close(q0, torch.softmax(-u, 1))
    terms = [PairwiseTerm(feats[0], 3.0), PairwiseTerm(feats[1], 5.0, "after")]
    q = mean_field(u, terms, iters=3, method="dense")
    for b in range(2):
        one = [PairwiseTerm(t.features[b : b + 1], t.compat, t.normalization) for t in terms]
        torch.testing.assert_close(q[b : b + 1], mean_field(u[b : b + 1], one, 3, method="dense"))


def test_autograd_path_equals_fast_path_and_has_gradients():
    rng = np.random.default_rng(4)
    unary, feats = _case(rng)
    terms = [PairwiseTerm(feats[0], 3.0), PairwiseTerm(feats[1], torch.ones(3), "after")]
    fast = mean_field(torch.from_numpy(unary), terms, iters=3, method="dense")
    u = torch.from_numpy(unary).requires_grad_(True)
    slow = mean_field(u, terms, iters=3, method="dense")
    torch.testing.assert_close(slow.detach(), fast)
    (slow[:, 0] ** 2).sum().backward()
    assert u.grad is not None and torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0


def test_rejects_nonsense():
    rng = np.random.default_rng(5)
    unary, feats = _case(rng)
    u = torch.from_numpy(unary)
    bad = u.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        mean_field(bad, [PairwiseTerm(feats[0], 3.0)], method="dense")
    with pytest.raises(ValueError, match="do not match"):
        mean_field(u, [PairwiseTerm(feats[0][:, :-1], 3.0)], method="dense")
    with pytest.raises(ValueError, match="normalization"):
        PairwiseTerm(feats[0], 3.0, "sideways")
    with pytest.raises(ValueError, match="compat"):
        mean_field(u, [PairwiseTerm(feats[0], torch.ones(2, 2))], method="dense")
    with pytest.raises(ValueError, match="method"):
        mean_field(u, [PairwiseTerm(feats[0], 3.0)], method="magic")
    with pytest.raises(ValueError, match="positive"):
        gaussian_features(5, 6, 0.0)


@requires_cuda
def test_cuda_matches_cpu():
    rng = np.random.default_rng(6)
    unary, feats = _case(rng)
    terms = [PairwiseTerm(feats[0], 3.0), PairwiseTerm(feats[1], 4.0, "after")]
    cpu = mean_field(torch.from_numpy(unary), terms, iters=5, method="dense")
    gpu = mean_field(torch.from_numpy(unary).cuda(), terms, iters=5, method="dense")
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)


def test_unary_helpers():
    from deeplabv1.crf.torch.unary import (
        unary_from_labels,
        unary_from_logits,
        unary_from_probabilities,
    )

    labels = torch.tensor([[0, 2, 255]])
    u = unary_from_labels(labels, 3, gt_prob=0.6, ignore_index=255)
    lo, hi, uni = -math.log(0.6), -math.log(0.2), math.log(3.0)
    expect = torch.tensor([[[lo, hi, uni], [hi, hi, uni], [hi, lo, uni]]])
    torch.testing.assert_close(u, expect)
    p = torch.tensor([[[0.0, 0.5], [1.0, 0.5]]])
    torch.testing.assert_close(unary_from_probabilities(p), -torch.log(p.clamp(1e-5, 1)))
    s = torch.randn(1, 3, 4)
    # logits and their softmax probabilities give the same marginals
    f = gaussian_features(2, 2, 1.0)
    a = mean_field(unary_from_logits(s), [PairwiseTerm(f, 2.0)], 3, method="dense")
    b = mean_field(unary_from_probabilities(torch.softmax(s, 1)), [PairwiseTerm(f, 2.0)], 3,
                   method="dense")  # fmt: skip
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="labels"):
        unary_from_labels(torch.tensor([[3]]), 3)
