"""The numba CPU engine (crf/engine/) against the torch side's own code on the same lattice."""

from __future__ import annotations

import pytest
import torch

from deeplabv1.crf.engine import jit, threads
from deeplabv1.crf.torch import meanfield as mf
from deeplabv1.crf.torch.lattice import PermutohedralLattice, clear_cache
from deeplabv1.crf.torch.meanfield import PairwiseTerm, mean_field

pytestmark = pytest.mark.skipif(not jit.available(), reason="numba not installed")


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
    monkeypatch.setattr(threads, "ENABLED", False)
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
        # reach ~100, where a float32 ulp is 1e-5): measured up to 6e-5
        torch.testing.assert_close(fast, slow, rtol=0, atol=1e-4)
        torch.testing.assert_close(fast.sum(1), torch.ones(batch, n), rtol=0, atol=1e-5)


def test_meanfield_threads_use_the_pool_only_when_several(monkeypatch) -> None:
    """One thread runs every kernel in the calling thread; two hand half the rows to the
    pool; the results agree (the threads' splat buffers sum in another order)."""
    batch, n, num_labels = 1, 500, 21
    unary = torch.randn(batch, num_labels, n, generator=torch.Generator().manual_seed(2)) * 2
    terms = _terms(batch, n, "after", 2)
    pooled = []
    real = threads._pool
    monkeypatch.setattr(threads, "_pool", lambda w: pooled.append(w) or real(w))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = mean_field(unary, terms, iters=5)
        assert pooled == []
        torch.set_num_threads(2)
        two = mean_field(unary, terms, iters=5)
    finally:
        torch.set_num_threads(before)
    if threads.use_threads(2) == 2:  # NUMBA_NUM_THREADS may allow a single thread
        assert pooled and set(pooled) == {1}
    torch.testing.assert_close(one, two, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["diagonal", "matrix"])
def test_non_potts_compat_runs_on_the_engine(monkeypatch, kind) -> None:
    """Diagonal and matrix compatibilities run on the numba engine too, and agree with the
    torch side's own loop."""
    g = torch.Generator().manual_seed(7)
    compat = torch.randn(4, generator=g) if kind == "diagonal" else torch.randn(4, 4, generator=g)
    terms = [PairwiseTerm(_features(2, 300, 2, torch.float32, 3), 3.0, "symmetric"),
             PairwiseTerm(_features(2, 300, 5, torch.float32, 4), compat, "after")]  # fmt: skip
    unary = torch.randn(2, 4, 300, generator=g) * 2
    calls = []
    real = mf._iterate_numba
    monkeypatch.setattr(mf, "_iterate_numba", lambda *a: calls.append(1) or real(*a))
    fast = mean_field(unary, terms, iters=5)
    assert calls == [1]
    monkeypatch.setattr(mf, "_numba_eligible", lambda u, t: False)
    slow = mean_field(unary, terms, iters=5)
    torch.testing.assert_close(fast, slow, rtol=0, atol=2e-5)


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
    from deeplabv1.crf.params import get_params
    from deeplabv1.crf.torch import build as lb

    for _, rgb, _ in voc_samples:
        for term in deeplab_terms(rgb, get_params(params)):
            ft = term.features.reshape(-1, term.features.shape[2]).t().contiguous()
            fast = lb.embed(ft)
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
    from deeplabv1.crf.torch import tables as li

    g = torch.Generator().manual_seed(d + n)
    f = (torch.rand(batch, n, d, generator=g, dtype=torch.float64) * spread).to(dtype)
    fast = li.lattice_tables(f)
    with monkeypatch.context() as m:
        m.setattr(li.jit, "available", lambda: False)
        slow = li.lattice_tables(f)
    assert fast.num_lattice == slow.num_lattice and fast.num_points == batch * n
    assert fast.splat is None  # built on demand
    for a, b in [(fast.splat_csr(), slow.splat_csr()), (fast.slice, slow.slice)]:
        assert torch.equal(a.crow_indices().long(), b.crow_indices().long())
        assert torch.equal(a.col_indices().long(), b.col_indices().long())
        assert torch.equal(a.values(), b.values())
    assert torch.equal(fast.neighbours, slow.neighbours)
    assert torch.equal(fast.bary, slow.bary)
