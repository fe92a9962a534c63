"""A Gaussian filter differentiable w.r.t. its inverse standard deviations (learnable kernels).

The CRF layer's kernels act on features f = raw * s, with raw the pixel positions / colours
and s (d,) the inverse standard deviations (1/sa, 1/sa, 1/sb, 1/sb, 1/sb for the bilateral
term). The filter out = K v, K_ij = exp(-|f_i - f_j|^2 / 2), is linear in v; w.r.t. s_d

    dK_ij / ds_d = -K_ij (f_id - f_jd)^2 / s_d,

so for an incoming gradient g the scale gradient expands into filterings that the lattice
already knows how to do (with F = f centred per image: the identity holds for any shift):

    sum_ij K_ij (F_id - F_jd)^2 g_i.v_j
        = sum_i F_id^2 g_i.(K v)_i - 2 sum_i F_id g_i.(K (F_d v))_i + sum_j F_jd^2 v_j.(K^T g)_j

one extra filtering of d*C channels per backward. **The approximation** (documented in
docs/crf_end_to_end.md): on the permutohedral lattice K is replaced by the lattice's operator
K~, i.e. we differentiate the *Gaussian model* with the lattice's weights, not the piecewise
linear barycentric interpolation of the lattice itself (whose derivative is a poor, noisy
estimate). With an exact filter (``ExactLinearFilter``) the formula is the exact gradient,
which the tests check against autograd; with the lattice it agrees with the exact gradient
to a few per cent (measured in tests/test_crf_layer.py).
"""

from __future__ import annotations

import torch

__all__ = ["ExactLinearFilter", "ScaledFilter"]


class ExactLinearFilter:
    """The exact kernel as a ``filter(values, reverse)`` object (tests; small N only)."""

    def __init__(self, features: torch.Tensor) -> None:
        diff = features[:, :, None, :] - features[:, None, :, :]
        self.kernel = torch.exp(-0.5 * (diff * diff).sum(-1)).detach()  # (B, N, N)

    def filter(self, values: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        return self.kernel @ values  # symmetric: reverse is the same operator


class ScaledFilter:
    """``.apply(values)``: K values with gradients to ``values`` and to ``scale``.

    raw: (B, N, d) unscaled features; scale: (d,) tensor (may require grad); ``base`` is any
    object with ``filter(values, reverse)`` built on ``raw * scale`` (a PermutohedralLattice or
    an ExactLinearFilter); its reverse filter must be the adjoint of the forward one.
    """

    def __init__(self, raw: torch.Tensor, scale: torch.Tensor, base) -> None:
        self.base = base
        self.scale = scale
        with torch.no_grad():
            centred = raw - raw.mean(dim=1, keepdim=True)
            self.centred = (centred * scale).to(torch.float64)  # F (B, N, d)

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        """Filter values (B, N, C) -> (B, N, C)."""
        return _ScaledFilterFn.apply(values, self.scale, self)


class _ScaledFilterFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, scale, owner: ScaledFilter):
        ctx.owner = owner
        dtype = values.dtype
        out = owner.base.filter(values.contiguous()).to(dtype)
        ctx.save_for_backward(values, scale, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        values, scale, out = ctx.saved_tensors
        owner = ctx.owner
        grad_out = grad_out.contiguous()
        k_t_g = owner.base.filter(grad_out.to(values.dtype), reverse=True).to(values.dtype)
        grad_values = k_t_g if ctx.needs_input_grad[0] else None
        grad_scale = None
        if ctx.needs_input_grad[1]:
            grad_scale = _scale_grad(owner, values, grad_out, out, k_t_g, scale)
        return grad_values, grad_scale, None


def _scale_grad(owner: ScaledFilter, v, g, out, k_t_g, scale) -> torch.Tensor:
    """-(1/s_d) sum_ij K_ij (F_id - F_jd)^2 g_i.v_j for every d, via the expansion above."""
    f = owner.centred  # (B, N, d) float64
    b, n, d = f.shape
    c = v.shape[-1]
    g64, v64 = g.to(torch.float64), v.to(torch.float64)
    g_out = (g64 * out.to(torch.float64)).sum(-1)  # (B, N): g_i . (K v)_i
    v_ktg = (v64 * k_t_g.to(torch.float64)).sum(-1)  # (B, N): v_j . (K^T g)_j
    f2 = f * f
    first = (f2 * g_out[..., None]).sum((0, 1))  # (d,)
    third = (f2 * v_ktg[..., None]).sum((0, 1))
    fv = (f[..., :, None].to(v.dtype) * v[..., None, :]).reshape(b, n, d * c)
    k_fv = owner.base.filter(fv.contiguous()).to(torch.float64).reshape(b, n, d, c)
    middle = (f[..., None] * k_fv * g64[..., None, :]).sum((0, 1, 3))  # (d,)
    total = first - 2 * middle + third
    return (-total / scale.detach().to(torch.float64)).to(scale.dtype)
