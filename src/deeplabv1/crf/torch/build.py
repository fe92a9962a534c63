"""Building the permutohedral lattice (Adams, Baek, Davis 2010) as in Kraehenbuehl's code.

Everything is vectorised over points in coordinate-major layout ((d+1, P) tensors, one short
loop over the d+1 coordinates), which is several times faster than (P, d+1) layouts for
row-wise sorts and scatters. Step by step:

1. ``embed``: elevate each feature vector onto the plane sum(x) = 0 of Z^{d+1}, find the
   nearest remainder-0 point rem0 = (d+1) q0, rank the residuals, fix the sum, and compute
   the barycentric weights of the d+1 enclosing vertices (vertex r = remainder r).
2. ``vertex_codes``: the key of vertex r is rem0 + canonical[r][rank]; all its coordinates are
   congruent to r mod d+1, i.e. k_i = (d+1) q_i + r with q_i = q0_i - [rank_i > d - r]. The
   key is packed into one int64 as the mixed-radix number (batch, r, q_0, ..., q_{d-1}) (the
   last coordinate is minus the sum of the others). The q ranges are padded (2 below, 1
   above) so that every blur neighbour packs to a distinct integer as well, and a neighbour's
   code is the point's code plus a constant that depends only on (axis, r).
3. ``lattice_tables`` (lattice_index.py) sorts the codes once: unique lattice points, the
   splat/slice sparse matrices and the blur neighbour indices.
"""

from __future__ import annotations

import numpy as np
import torch

from deeplabv1.crf.engine import build as engine_build
from deeplabv1.crf.engine.build import Radix, scale_factors
from deeplabv1.crf.engine.jit import available

__all__ = ["embed", "Radix", "make_radix", "vertex_codes", "neighbour_deltas"]


def embed(features_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Enclosing simplex of each point; features_t is (d, P) (coordinate-major).

    Returns q0 (d+1, P) int64 with rem0 = (d+1) q0, rank (d+1, P) int64 (a permutation of
    0..d per point) and bary (d+1, P) barycentric weights in remainder order (sum 1).
    """
    d, p = features_t.shape
    if features_t.dtype == torch.float32 and features_t.device.type == "cpu" and available():
        arrays = engine_build.embed(features_t.contiguous().numpy(), torch.get_num_threads())
        return tuple(torch.from_numpy(a) for a in arrays)
    # Elevation as pydensecrf's SSE code: each product rounded before the subtraction.
    wide = np.float64 if features_t.dtype == torch.float64 else np.float32
    scale = torch.from_numpy(scale_factors(d, wide)).to(features_t)
    elevated = features_t.new_empty(d + 1, p)
    sm = torch.zeros_like(features_t[0])
    for j in range(d, 0, -1):
        cf = features_t[j - 1] * scale[j - 1]
        torch.sub(sm, cf * j, out=elevated[j])
        sm = sm + cf
    elevated[0] = sm
    # Nearest remainder-0 point: e * float(1/(d+1)) rounded half to even (SSE rounding).
    inv = torch.tensor(1.0, dtype=features_t.dtype) / (d + 1)
    q0f = torch.round(elevated * inv.to(features_t.device))
    resid = elevated - q0f * (d + 1)
    # rank[i] = #{j > i: resid_j > resid_i} + #{j < i: resid_j >= resid_i} (ties by index).
    rank = torch.zeros(d + 1, p, dtype=torch.int64, device=features_t.device)
    for i in range(d):
        for j in range(i + 1, d + 1):
            lower = resid[i] < resid[j]
            rank[i] += lower
            rank[j] += ~lower
    q0 = q0f.to(torch.int64)
    # Bring the point back onto the plane: shift the ranks by the remainder sum and wrap.
    rank += q0.sum(0, keepdim=True)
    low = (rank < 0).to(torch.int64)
    high = (rank > d).to(torch.int64)
    rank += (d + 1) * (low - high)
    q0 += low - high
    # Barycentric weights: b[d - rank_i] += t_i, b[d - rank_i + 1] -= t_i, b[0] += 1 + b[d+1].
    # With s[k] = t of the coordinate whose d - rank is k: b[k] = s[k] - s[k-1], b[0] wraps.
    t = (elevated - q0.to(elevated.dtype) * (d + 1)) * inv.to(features_t.device)
    s = torch.empty_like(t).scatter_(0, d - rank, t)
    bary = torch.empty_like(t)
    torch.sub(s[1:], s[:-1], out=bary[1:])
    bary[0] = s[0] + (1.0 - s[d])
    return q0, rank, bary


def make_radix(q0: torch.Tensor, batch_size: int, max_bits: int = 62) -> Radix | None:
    """The packing for these simplices, or None when the codes would not fit in max_bits."""
    d = q0.shape[0] - 1
    return engine_build.radix_from_bounds(
        q0[:d].amin(1).tolist(), q0[:d].amax(1).tolist(), d, batch_size, max_bits
    )


def vertex_codes(
    q0: torch.Tensor, rank: torch.Tensor, batch: torch.Tensor | None, radix: Radix
) -> torch.Tensor:
    """Packed codes (d+1, P) of the d+1 vertices of every point's simplex.

    Going from vertex r-1 to vertex r lowers q_i by one for the coordinate of rank d-r+1.
    """
    d = radix.d
    base = torch.zeros_like(q0[0])
    for i in range(d):
        base += (q0[i] - radix.lo[i]) * radix.strides[i]
    if batch is not None:
        base += batch * radix.b_stride
    # stride_of_rank[k] = stride of the coordinate with rank k (coordinate d has none).
    strides = torch.tensor(radix.strides + [0], dtype=torch.int64, device=q0.device)
    stride_of_rank = torch.empty_like(rank).scatter_(0, rank, strides[:, None].expand_as(rank))
    codes = torch.empty_like(rank)
    codes[0] = base
    for r in range(1, d + 1):
        torch.sub(codes[r - 1], stride_of_rank[d - r + 1], out=codes[r])
        codes[r] += radix.r_stride
    return codes


def neighbour_deltas(radix: Radix) -> torch.Tensor:
    """(d+1 axes, 2, d+1 remainders) code offsets of the two blur neighbours along each axis
    (engine_build.neighbour_deltas as a tensor)."""
    return torch.from_numpy(engine_build.neighbour_deltas(radix))
