"""The numba CPU kernels (crf/lattice_numba.py) against the torch path of the same lattice."""

from __future__ import annotations

import pytest
import torch

from deeplabv1.crf import lattice_numba
from deeplabv1.crf import meanfield as mf
from deeplabv1.crf.lattice import PermutohedralLattice, clear_cache
from deeplabv1.crf.meanfield import PairwiseTerm, mean_field

pytestmark = pytest.mark.skipif(not lattice_numba.available(), reason="numba not installed")


def _features(batch: int, n: int, d: int, dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, n, d, generator=g, dtype=torch.float64) * 6).to(dtype)


@pytest.mark.parametrize("d", [1, 2, 5])
@pytest.mark.parametrize("reverse", [False, True])
def test_filter_numba_equals_torch(monkeypatch, d, reverse) -> None:
    f = _features(2, 300, d, torch.float64, d)
    v = torch.randn(2, 300, 3, dtype=torch.float64)
    lat = PermutohedralLattice(f)
    assert lat.uses_numba()
    fast = lat.apply(v, reverse=reverse)
    monkeypatch.setattr(lattice_numba, "numba", None)
    assert not lat.uses_numba()
    slow = lat.apply(v, reverse=reverse)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    lat32 = PermutohedralLattice(f.float())
    torch.testing.assert_close(lat32.apply(v.float(), reverse=reverse), slow.float(),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def _terms(batch, n, normalization, count):
    feats = [_features(batch, n, 2, torch.float32, 10), _features(batch, n, 5, torch.float32, 11),
             _features(batch, n, 3, torch.float32, 12)]  # fmt: skip
    return [PairwiseTerm(feats[k], (3.0, 4.0, 1.5)[k], normalization) for k in range(count)]


@pytest.mark.parametrize("normalization", ["after", "symmetric", "before", "none"])
@pytest.mark.parametrize("num_labels", [2, 21])
@pytest.mark.parametrize("count", [1, 2, 3])
def test_meanfield_numba_equals_torch(monkeypatch, normalization, num_labels, count) -> None:
    batch, n = 2, 400
    unary = torch.randn(batch, num_labels, n, generator=torch.Generator().manual_seed(1)) * 2
    terms = _terms(batch, n, normalization, count)
    calls = []
    real = mf._iterate_numba
    monkeypatch.setattr(mf, "_iterate_numba", lambda *a: calls.append(1) or real(*a))
    for iters in (0, 1, 5):
        fast = mean_field(unary, terms, iters=iters)
        assert len(calls) == 1
        calls.clear()
        monkeypatch.setattr(mf, "_numba_eligible", lambda u, t: False)
        slow = mean_field(unary, terms, iters=iters)
        monkeypatch.undo()
        monkeypatch.setattr(mf, "_iterate_numba", lambda *a: calls.append(1) or real(*a))
        assert fast.shape == slow.shape == (batch, num_labels, n)
        # float32 sums in another order, through up to 5 iterations (unnormalised messages
        # reach ~100): measured up to 2e-5
        torch.testing.assert_close(fast, slow, rtol=0, atol=5e-5)
        torch.testing.assert_close(fast.sum(1), torch.ones(batch, n), rtol=0, atol=1e-5)


def test_meanfield_one_thread_runs_serial_kernels(monkeypatch) -> None:
    batch, n, num_labels = 1, 500, 21
    unary = torch.randn(batch, num_labels, n, generator=torch.Generator().manual_seed(2)) * 2
    terms = _terms(batch, n, "after", 2)
    used = []
    for name in ("fused_step", "fused_step_serial", "blur", "blur_serial"):
        real = getattr(lattice_numba, name)
        monkeypatch.setattr(lattice_numba, name,
                            lambda *a, _r=real, _n=name: used.append(_n) or _r(*a))  # fmt: skip
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = mean_field(unary, terms, iters=5)
        assert set(used) == {"fused_step_serial", "blur_serial"}
        used.clear()
        torch.set_num_threads(2)
        two = mean_field(unary, terms, iters=5)
    finally:
        torch.set_num_threads(before)
    if lattice_numba.set_threads(2) == 2:  # the pool may have a single thread
        assert set(used) == {"fused_step", "blur"}
    # the workers' splat buffers sum in another order
    torch.testing.assert_close(one, two, rtol=0, atol=1e-6)


def test_matrix_compat_uses_torch_path(monkeypatch) -> None:
    terms = [PairwiseTerm(_features(1, 50, 2, torch.float32, 3), torch.eye(4), "after")]
    monkeypatch.setattr(mf, "_iterate_numba", lambda *a: pytest.fail("numba path taken"))
    q = mean_field(torch.randn(1, 4, 50), terms, iters=2)
    assert q.shape == (1, 4, 50)


def test_lattice_cache_reuses_equal_features() -> None:
    clear_cache()
    f = _features(1, 200, 2, torch.float32, 5)
    a, b = PermutohedralLattice(f), PermutohedralLattice(f.clone())
    assert a.tables is b.tables
    assert a.normalizer() is b.normalizer()
    g = f.clone()
    g[0, 0, 0] += 1.0
    c = PermutohedralLattice(g)
    assert c.tables is not a.tables
    torch.testing.assert_close(PermutohedralLattice(f).apply(torch.ones(1, 200, 1)),
                               a.normalizer())  # fmt: skip


@pytest.mark.parametrize("params", ["deeplab-largefov", "deeplab", "deeplab-msc"])
def test_embed_numba_is_bitwise_torch(monkeypatch, voc_samples, params) -> None:
    """The numba embedding (float32) gives exactly the torch embedding's simplices/weights."""
    from deeplabv1.crf import deeplab_terms
    from deeplabv1.crf import lattice_build as lb
    from deeplabv1.crf.params import get_params

    for _, rgb, _ in voc_samples:
        for term in deeplab_terms(rgb, get_params(params)):
            ft = term.features.reshape(-1, term.features.shape[2]).t().contiguous()
            fast = lb._embed_numba(ft, lb.scale_factors(ft.shape[0]))
            with monkeypatch.context() as m:
                m.setattr(lb, "available", lambda: False)
                slow = lb.embed(ft)
            for a, b in zip(fast, slow):
                assert torch.equal(a, b)


@pytest.mark.parametrize(("batch", "n", "d", "spread"),
                         [(1, 3000, 2, 3.0), (2, 500, 5, 6.0), (3, 400, 1, 4.0),
                          (1, 6000, 5, 30.0), (1, 1, 3, 1.0)])  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hash_build_equals_sort_build(monkeypatch, batch, n, d, spread, dtype) -> None:
    """The numba hash-table build gives exactly the sort-based build's tables (numbering,
    splat/slice CSR, neighbours); (1, 6000, 5, 30) has more lattice points than the hash
    table's first capacity, so it grows."""
    from deeplabv1.crf import lattice_index as li

    g = torch.Generator().manual_seed(d + n)
    f = (torch.rand(batch, n, d, generator=g, dtype=torch.float64) * spread).to(dtype)
    fast = li.lattice_tables(f)
    with monkeypatch.context() as m:
        m.setattr(li.lattice_numba, "available", lambda: False)
        slow = li.lattice_tables(f)
    assert fast.num_lattice == slow.num_lattice and fast.num_points == batch * n
    assert fast.splat is None  # built on demand
    for a, b in [(fast.splat_csr(), slow.splat_csr()), (fast.slice, slow.slice)]:
        assert torch.equal(a.crow_indices().long(), b.crow_indices().long())
        assert torch.equal(a.col_indices().long(), b.col_indices().long())
        assert torch.equal(a.values(), b.values())
    assert torch.equal(fast.neighbours, slow.neighbours)
    assert torch.equal(fast.bary, slow.bary)
