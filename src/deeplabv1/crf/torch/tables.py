"""Hashing the lattice vertices into tables: splat/slice sparse matrices and blur neighbours.

One sort of the P (d+1) vertex codes replaces the hash table of the reference code: equal
codes are adjacent, so the sorted order gives the unique lattice points (in code order), the
rows of the splat matrix (lattice points x pixels, CSR) and, scattered back, the vertex ->
lattice point offsets that form the slice matrix (pixels x lattice points, CSR). Blur
neighbours are found by binary search of their codes among the sorted unique codes.

On the CPU with numba the engine's open-addressing hash table (``engine.build.build_tables``)
replaces the sort: vertices are numbered in order of first occurrence (pixel-major), which is
exactly the sort path's numbering after its renumbering by first pixel, so every table is
identical (tests/test_crf_numba.py); the splat CSR, which only the torch filter path uses, is
then built on first use (``LatticeTables.splat_csr``). The sort path serves CUDA and
numba-less installs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from deeplabv1.crf.engine import build as engine_build
from deeplabv1.crf.engine import build_kernels, jit
from deeplabv1.crf.torch.build import Radix, embed, make_radix, neighbour_deltas, vertex_codes

__all__ = ["LatticeTables", "lattice_tables"]

# Packed vertex codes must stay below 2**MAX_CODE_BITS, else the slow unique-rows path runs.
MAX_CODE_BITS = 62


@dataclass
class LatticeTables:
    """Everything apply() needs; M lattice points, P input points, dimension d."""

    num_points: int  # P
    num_lattice: int  # M
    splat: torch.Tensor | None  # (M, P) CSR, barycentric weights (None: see splat_csr)
    slice: torch.Tensor  # (P, M) CSR, barycentric weights times alpha
    neighbours: torch.Tensor  # (d+1, 2, M) int64 indices into M rows; M = missing (zero row)
    bary: torch.Tensor | None = None  # (P, d+1) barycentric weights (slice values / alpha)

    def splat_csr(self) -> torch.Tensor:
        """The splat matrix; the numba build leaves it to the first call (its kernels splat
        from the slice's pixel-major tables; only the torch filter path needs it)."""
        if self.splat is None:
            self.splat = _splat_numba(self.slice.col_indices(), self.bary, self.num_lattice)
        return self.splat


def _csr(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, size: tuple[int, int]):
    """A CSR matrix with int32 indices when they fit: torch hands those to MKL without a copy."""
    if col.numel() < 1 << 31 and max(size) < 1 << 31:
        crow, col = crow.to(torch.int32), col.to(torch.int32)
    with warnings.catch_warnings():  # torch's "Sparse CSR tensor support is in beta"
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, val, size=size, check_invariants=False)


def lattice_tables(features: torch.Tensor, phantoms: bool = False) -> LatticeTables:
    """Build the lattice of features (B, N, d); points of different images never share a vertex.

    With ``phantoms`` each image is followed by pydensecrf's phantom zero points
    (``engine.build.phantom_points``), whose vertices are hashed but which have no rows in the
    tables (the pydensecrf drop-in)."""
    b, n, d = features.shape
    p = b * n
    dev = features.device
    pad = engine_build.phantom_points(n) if phantoms else 0
    padded = n + pad
    if pad:
        features = torch.cat([features, features.new_zeros(b, pad, d)], 1)
    # Temporaries are dropped as soon as they are used (``del``): the build's peak memory is
    # that of the few int64 (P (d+1),) arrays alive at once.
    q0, rank, bary = embed(features.reshape(b * padded, d).t().contiguous())
    radix = make_radix(q0, b, MAX_CODE_BITS)
    if radix is not None and dev.type == "cpu" and jit.available():
        ids, nbrs = engine_build.build_tables(
            q0.numpy(), rank.numpy(), radix, padded, num_threads=torch.get_num_threads()
        )
        offsets, neighbours, splat = torch.from_numpy(ids), torch.from_numpy(nbrs), None
    else:
        batch = torch.arange(b, device=dev).repeat_interleave(padded) if b > 1 else None
        offsets, neighbours = _tables_sorted(q0, rank, batch, radix)
        splat = True  # built below from the real points' rows
    del q0, rank
    m = neighbours.shape[2]
    offsets = offsets.view(b, padded, d + 1)[:, :n].reshape(p, d + 1)
    bary_pm = bary.t().reshape(b, padded, d + 1)[:, :n].reshape(p, d + 1).contiguous()
    del bary
    k = p * (d + 1)
    index = torch.int32 if k < 1 << 31 else torch.int64
    alpha = engine_build.slice_alpha(d)
    slice_crow = torch.arange(0, k + 1, d + 1, dtype=index, device=dev)
    flat = offsets.reshape(-1).to(index)
    slice_ = _csr(slice_crow, flat, bary_pm.view(-1) * alpha, (p, m))
    if splat is not None:
        splat = _splat_sorted(flat, bary_pm, m)
    return LatticeTables(p, m, splat, slice_, neighbours, bary_pm)


def _tables_sorted(q0, rank, batch, radix: Radix | None):
    """Vertex ids (P, d+1) and neighbours (d+1, 2, M) by one sort of the vertex codes, lattice
    points numbered by first occurrence (pixel-major), as the hash-table build numbers them."""
    d = q0.shape[0] - 1
    dev = q0.device
    if radix is not None:
        codes = vertex_codes(q0, rank, batch, radix)
        if radix.b_stride * (1 if batch is None else batch.numel()) < 1 << 31:
            codes = codes.to(torch.int32)  # sorts about twice as fast
    else:
        codes = _dense_ids(q0, rank, batch)
    # Pixel-major flat index pixel * (d+1) + r; the stable sort keeps pixels ascending
    # within each lattice point, so the first entry of a group is its first pixel.
    sorted_codes, perm = torch.sort(codes.t().reshape(-1), stable=True)
    del codes
    k = sorted_codes.numel()
    is_new = torch.ones(k, dtype=torch.bool, device=dev)
    torch.ne(sorted_codes[1:], sorted_codes[:-1], out=is_new[1:])
    starts = torch.nonzero(is_new).squeeze(1)
    m = starts.numel()
    group = torch.cumsum(is_new, 0) - 1  # lattice point (in code order) of each sorted entry
    del is_new
    if radix is not None:
        nb = _neighbours(sorted_codes[starts].long(), radix)
    else:
        nb = _neighbours_by_rows(q0, rank, batch, group, perm, m)
    del sorted_codes
    # Renumber lattice points by their first pixel: splat and slice then walk the pixels and
    # the lattice points in nearly the same order (measured: about 2x faster splat on CPU).
    order = torch.argsort(perm[starts])
    new_id = torch.empty_like(order).scatter_(0, order, torch.arange(m, device=dev))
    del order, starts
    offsets = torch.empty_like(perm).scatter_(0, perm, new_id[group])  # pixel-major
    del perm, group
    # Relabel to the new numbering (m, the missing marker, stays m).
    relabel = torch.cat([new_id, new_id.new_tensor([m])])
    neighbours = torch.empty_like(nb).index_copy_(2, new_id, relabel[nb])
    return offsets.view(-1, d + 1), neighbours


def _splat_sorted(flat: torch.Tensor, bary: torch.Tensor, m: int) -> torch.Tensor:
    """Splat CSR (M, P) from the pixel-major vertex ids (P (d+1),) and weights (P, d+1) by a
    stable sort: the pixels of each lattice point ascending (as ``_splat_numba``)."""
    p, nv = bary.shape
    order = torch.sort(flat, stable=True).indices
    crow = torch.zeros(m + 1, dtype=flat.dtype, device=flat.device)
    torch.cumsum(torch.bincount(flat, minlength=m), 0, out=crow[1:])
    col = torch.div(order, nv, rounding_mode="floor").to(flat.dtype)
    return _csr(crow, col, bary.reshape(-1)[order], (m, p))


def _splat_numba(ids: torch.Tensor, bary: torch.Tensor, m: int) -> torch.Tensor:
    """Splat CSR (M, P) from the pixel-major vertex ids (P (d+1),) and weights (P, d+1): the
    pixels of each lattice point ascending, as the sort build orders them."""
    p, nv = bary.shape
    ids = ids.view(p, nv)
    crow = torch.empty(m + 1, dtype=ids.dtype)
    col = torch.empty(p * nv, dtype=ids.dtype)
    val = torch.empty(p * nv, dtype=bary.dtype)
    build_kernels.lattice_csr(ids.numpy(), bary.numpy(), m, crow.numpy(), col.numpy(), val.numpy())
    return _csr(crow, col, val, (m, p))


def _neighbours(unique_codes: torch.Tensor, radix: Radix) -> torch.Tensor:
    """(d+1, 2, M) neighbour indices (code order) by binary search; M where missing.

    Only neighbour 1 is searched: y = n1_j(x) exactly when x = n2_j(y), so neighbour 2 is
    the inverse map.
    """
    d = radix.d
    m = unique_codes.numel()
    remainder = torch.div(unique_codes, radix.r_stride, rounding_mode="floor") % (d + 1)
    deltas = neighbour_deltas(radix).to(unique_codes.device)[:, 0]  # (d+1, d+1)
    wanted = unique_codes + deltas[:, remainder]  # (d+1, M), sorted within remainder runs
    idx = torch.searchsorted(unique_codes, wanted)
    idx.clamp_(max=m - 1)
    found = unique_codes[idx] == wanted
    out = torch.full((d + 1, 2, m), m, dtype=torch.int64, device=unique_codes.device)
    out[:, 0] = torch.where(found, idx, m)
    src = torch.arange(m, device=unique_codes.device).expand(d + 1, m)
    # Rows with no neighbour 1 scatter into a spare column m that is dropped.
    spare = torch.full((d + 1, m + 1), m, dtype=torch.int64, device=unique_codes.device)
    spare.scatter_(1, out[:, 0], src)
    out[:, 1] = spare[:, :m]
    return out


def _digits(q0: torch.Tensor, rank: torch.Tensor, batch: torch.Tensor | None) -> torch.Tensor:
    """Explicit integer keys (d+1, P, d+2) = (batch, r, q_0..q_{d-1}) of every vertex."""
    d = q0.shape[0] - 1
    p = q0.shape[1]
    r = torch.arange(d + 1, device=q0.device)
    q = q0[None, :d, :] - (rank[None, :d, :] > (d - r)[:, None, None]).to(q0.dtype)
    head = torch.stack(
        [
            (batch if batch is not None else torch.zeros_like(q0[0]))[None].expand(d + 1, p),
            r[:, None].expand(d + 1, p),
        ],
        1,
    )
    return torch.cat([head, q], 1).permute(0, 2, 1)


def _dense_ids(q0: torch.Tensor, rank: torch.Tensor, batch: torch.Tensor | None) -> torch.Tensor:
    """Vertex codes as dense ids of unique key rows: the slow path for absurd feature scales."""
    keys = _digits(q0, rank, batch)
    _, ids = torch.unique(keys.reshape(-1, keys.shape[-1]), dim=0, return_inverse=True)
    return ids.view(keys.shape[0], keys.shape[1])


def _neighbours_by_rows(q0, rank, batch, group, perm, m) -> torch.Tensor:
    """Neighbour indices (code order) from explicit key rows: slow path, same as _neighbours."""
    d = q0.shape[0] - 1
    keys = _digits(q0, rank, batch).reshape(-1, d + 2)  # index r * P + pixel
    p = q0.shape[1]
    flat_rp = (perm % (d + 1)) * p + torch.div(perm, d + 1, rounding_mode="floor")
    point_keys = torch.empty(m, d + 2, dtype=keys.dtype, device=keys.device)
    point_keys[group] = keys[flat_rp]
    r = point_keys[:, 1]
    cands = []
    for j in range(d + 1):
        for sign in (-1, 1):
            nb = point_keys.clone()
            wrap = (r == 0) if sign < 0 else (r == d)
            nb[:, 1] = (r + sign) % (d + 1)
            nb[:, 2:] += (sign * wrap.to(nb.dtype))[:, None]
            if j < d:
                nb[:, 2 + j] -= sign
            cands.append(nb)
    allkeys = torch.cat([point_keys] + cands)
    _, inv = torch.unique(allkeys, dim=0, return_inverse=True)
    table = torch.full((int(inv.max()) + 1,), m, dtype=torch.int64, device=inv.device)
    table[inv[:m]] = torch.arange(m, device=inv.device)
    return table[inv[m:]].view(d + 1, 2, m)
