"""DenseFilter: the exact O(N^2) Gaussian filter against a direct matrix construction."""

from __future__ import annotations

import math

import pytest
import torch

from deeplabv1.crf.torch.dense import DenseFilter


def _kernel_matrix(f: torch.Tensor) -> torch.Tensor:
    """(B, N, N) exp(-|f_i - f_j|^2 / 2), built entry by entry for a tiny case."""
    b, n, _ = f.shape
    k = torch.empty(b, n, n, dtype=torch.float64)
    for bi in range(b):
        for i in range(n):
            for j in range(n):
                k[bi, i, j] = math.exp(-0.5 * float(((f[bi, i] - f[bi, j]) ** 2).sum()))
    return k


@pytest.mark.parametrize("tile", [1, 7, 1 << 23])
def test_dense_matches_explicit_sum(tile: int) -> None:
    f = torch.randn(2, 17, 3, dtype=torch.float64)
    v = torch.randn(2, 17, 4, dtype=torch.float64)
    out = DenseFilter(f, tile_elements=tile).apply(v)
    assert out.shape == (2, 17, 4)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, _kernel_matrix(f) @ v, rtol=1e-12, atol=1e-12)


def test_dense_self_term_and_normalizer() -> None:
    # Far-apart points: each one only sees itself (kernel value 1 at j = i).
    f = torch.tensor([[[0.0], [100.0], [200.0]]])
    norm = DenseFilter(f).normalizer()
    torch.testing.assert_close(norm, torch.ones(1, 3, 1))
    # Identical points: every one sees all three.
    same = DenseFilter(torch.zeros(1, 3, 2)).normalizer()
    torch.testing.assert_close(same, torch.full((1, 3, 1), 3.0))


def test_dense_images_do_not_interact() -> None:
    f = torch.randn(3, 10, 2)
    v = torch.randn(3, 10, 2)
    both = DenseFilter(f).apply(v)
    for b in range(3):
        torch.testing.assert_close(both[b : b + 1], DenseFilter(f[b : b + 1]).apply(v[b : b + 1]))


def test_dense_float32_large_features_accurate() -> None:
    # Raw colour / srgb-sized features: the explicit-difference form stays exact in float32.
    f64 = torch.rand(1, 40, 5, dtype=torch.float64) * 60
    f64[0, 1] = f64[0, 0] + 0.3
    v = torch.rand(1, 40, 3, dtype=torch.float64)
    ref = _kernel_matrix(f64) @ v
    out = DenseFilter(f64.float()).apply(v.float())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)


def test_dense_gradcheck_values() -> None:
    f = torch.randn(1, 6, 2, dtype=torch.float64)
    v = torch.randn(1, 6, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(DenseFilter(f).apply, (v,))


@pytest.mark.parametrize(
    ("features", "match"),
    [
        (torch.zeros(4, 2), "shape"),
        (torch.zeros(1, 4, 2, dtype=torch.int64), "floating"),
        (torch.tensor([[[0.0, float("nan")]]]), "NaN"),
        (torch.tensor([[[0.0, float("inf")]]]), "NaN or infinite"),
    ],
)
def test_dense_rejects_bad_features(features: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DenseFilter(features)


def test_dense_rejects_bad_values() -> None:
    filt = DenseFilter(torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match="values"):
        filt.apply(torch.zeros(1, 5, 2))
