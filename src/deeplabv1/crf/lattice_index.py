"""Hashing the lattice vertices into tables: splat/slice sparse matrices and blur neighbours.

One sort of the P (d+1) vertex codes replaces the hash table of the reference code: equal
codes are adjacent, so the sorted order gives the unique lattice points (in code order), the
rows of the splat matrix (lattice points x pixels, CSR) and, scattered back, the vertex ->
lattice point offsets that form the slice matrix (pixels x lattice points, CSR). Blur
neighbours are found by binary search of their codes among the sorted unique codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deeplabv1.crf.lattice_build import Radix, embed, make_radix, neighbour_deltas, vertex_codes

__all__ = ["LatticeTables", "lattice_tables"]


@dataclass
class LatticeTables:
    """Everything apply() needs; M lattice points, P input points, dimension d."""

    num_points: int  # P
    num_lattice: int  # M
    splat: torch.Tensor  # (M, P) CSR, barycentric weights
    slice: torch.Tensor  # (P, M) CSR, barycentric weights times alpha
    neighbours: torch.Tensor  # (d+1, 2, M) int64 indices into M rows; M = missing (zero row)


def _csr(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, size: tuple[int, int]):
    return torch.sparse_csr_tensor(crow, col, val, size=size, check_invariants=False)


def lattice_tables(features: torch.Tensor) -> LatticeTables:
    """Build the lattice of features (B, N, d); points of different images never share a vertex."""
    b, n, d = features.shape
    p = b * n
    features_t = features.reshape(p, d).t().contiguous()
    q0, rank, bary = embed(features_t)
    batch = None
    if b > 1:
        batch = torch.arange(b, device=features.device).repeat_interleave(n)
    radix = make_radix(q0, b)
    if radix is not None:
        codes = vertex_codes(q0, rank, batch, radix)
    else:
        codes = _dense_ids(q0, rank, batch)
    flat = codes.reshape(-1)  # index r * P + pixel
    sorted_codes, perm = torch.sort(flat)
    is_new = torch.ones_like(sorted_codes, dtype=torch.bool)
    torch.ne(sorted_codes[1:], sorted_codes[:-1], out=is_new[1:])
    starts = torch.nonzero(is_new).squeeze(1)
    m = starts.numel()
    unique_codes = sorted_codes[starts]
    ids = torch.cumsum(is_new, 0) - 1
    offsets = torch.empty_like(ids).scatter_(0, perm, ids).view(d + 1, p)
    crow = torch.cat([starts, starts.new_tensor([flat.numel()])])
    bary_flat = bary.reshape(-1)
    splat = _csr(crow, perm % p, bary_flat[perm], (m, p))
    alpha = 1.0 / (1.0 + 2.0 ** (-d))
    slice_crow = torch.arange(0, p * (d + 1) + 1, d + 1, device=features.device)
    slice_ = _csr(slice_crow, offsets.t().reshape(-1), (bary.t() * alpha).reshape(-1), (p, m))
    if radix is not None:
        neighbours = _neighbours(unique_codes, radix)
    else:
        neighbours = _neighbours_by_rows(q0, rank, batch, offsets, m)
    return LatticeTables(p, m, splat, slice_, neighbours)


def _neighbours(unique_codes: torch.Tensor, radix: Radix) -> torch.Tensor:
    """(d+1, 2, M) neighbour indices by binary search of the neighbour codes; M if missing."""
    d = radix.d
    m = unique_codes.numel()
    remainder = torch.div(unique_codes, radix.r_stride, rounding_mode="floor") % (d + 1)
    deltas = neighbour_deltas(radix).to(unique_codes.device)  # (d+1, 2, d+1)
    wanted = unique_codes + deltas[:, :, remainder]  # (d+1, 2, M)
    idx = torch.searchsorted(unique_codes, wanted)
    idx.clamp_(max=m - 1)
    found = unique_codes[idx] == wanted
    return torch.where(found, idx, torch.full_like(idx, m))


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


def _neighbours_by_rows(q0, rank, batch, offsets, m) -> torch.Tensor:
    """Neighbour indices from explicit key rows (slow path, same result as _neighbours)."""
    d = q0.shape[0] - 1
    keys = _digits(q0, rank, batch).reshape(-1, d + 2)
    point_keys = torch.empty(m, d + 2, dtype=keys.dtype, device=keys.device)
    point_keys[offsets.reshape(-1)] = keys
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
