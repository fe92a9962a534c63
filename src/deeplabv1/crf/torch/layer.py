"""The dense CRF as a recurrent layer (CRF-as-RNN, Zheng et al. 2015) on DeepLab's CRF engine.

``CRFLayer(num_classes)(scores, images) -> logits``: ``iters`` mean-field updates unrolled as
ordinary autograd operations, with the same features (``features.py``), filters (the
permutohedral lattice of ``lattice.py`` or the exact ``dense.py`` reference), normalisation and
mean-field step (``meanfield.mean_field_step`` / ``pairwise_message``) as the inference engine.
The unary is DeepLab's: -(full-resolution scores). The returned logits are the last update's
pre-softmax messages, softmax(logits) = Q, so a cross-entropy loss applies directly.

Learned parameters: the term weights ``weights`` = (w1, w2), one label compatibility ``compat``
(L, L) (energies, used symmetrised as Kraehenbuehl's code does; initialised to Potts 1 - I,
equivalent to DeepLab's Potts terms) and, with ``learn_std=True``, the log standard deviations
(sa, sb, sg) (gradients by the documented approximation of ``scaled_filter.py``).

Gradients: the lattice filter is linear, backward = the adjoint filtering of the incoming
gradient (exact for the lattice operator). Memory grows linearly with ``iters`` (each unrolled
update keeps a few (B, N, L) tensors); ``checkpoint=True`` recomputes each update in the
backward pass (torch.utils.checkpoint) and keeps only Q between updates.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from deeplabv1.crf.params import get_params
from deeplabv1.crf.torch.features import as_rgb_batch, bilateral_features
from deeplabv1.crf.torch.learned import LearnedCRFParams, crf_params_from_checkpoint
from deeplabv1.crf.torch.meanfield import NORMALIZATIONS, mean_field_step, pairwise_message
from deeplabv1.crf.torch.terms import PreparedTerm

__all__ = ["CRFLayer"]

METHODS = ("lattice", "dense")


class CRFLayer(nn.Module):
    """Mean-field CRF layer: (B, L, H, W) scores + (B, H, W, 3) uint8 RGB -> (B, L, H, W) logits.

    params: the initial CRFParams (or a variant name, or LearnedCRFParams to continue from).
    iters: unrolled updates (5 for training, as CRF-as-RNN; ``forward(..., iters=10)`` at test).
    method: "lattice" (O(N)) or "dense" (exact, O(N^2), tests). checkpoint: recompute updates
    in backward to save memory (identical gradients). Computes in the scores' dtype.
    """

    def __init__(self, num_classes: int, params="deeplab-largefov", *, iters: int = 5,
                 normalization: str = "after", method: str = "lattice",
                 learn_std: bool = False, checkpoint: bool = False) -> None:  # fmt: skip
        super().__init__()
        params = get_params(params)
        if int(num_classes) < 2:
            raise ValueError(f"num_classes: must be >= 2, got {num_classes}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization: expected one of {NORMALIZATIONS}")
        if method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
        self.num_classes, self.iters = int(num_classes), int(iters)
        self.normalization, self.method, self.checkpoint = normalization, method, checkpoint
        if isinstance(params, LearnedCRFParams):
            if params.num_classes != self.num_classes:
                raise ValueError(f"params: compat is for {params.num_classes} classes, "
                                 f"not {self.num_classes}")  # fmt: skip
            compat = params.compat_matrix()
        else:
            compat = 1.0 - torch.eye(self.num_classes)
        self.weights = nn.Parameter(torch.tensor([params.w1, params.w2], dtype=torch.float32))
        self.compat = nn.Parameter(compat.to(torch.float32))
        log_std = torch.tensor([params.sa, params.sb, params.sg], dtype=torch.float32).log()
        self.log_std = nn.Parameter(log_std, requires_grad=bool(learn_std))

    @classmethod
    def from_checkpoint_entry(cls, entry, num_classes: int, **kwargs) -> CRFLayer:
        """A layer initialised from a checkpoint's ``crf`` entry (see learned.py)."""
        params = crf_params_from_checkpoint(entry)
        if isinstance(params, LearnedCRFParams):
            kwargs.setdefault("normalization", params.normalization)
        return cls(num_classes, params, **kwargs)

    def crf_params(self) -> LearnedCRFParams:
        """The current parameters as LearnedCRFParams (what eval/predict run)."""
        w1, w2 = (float(x) for x in self.weights.detach().cpu())
        sa, sb, sg = (float(x) for x in self.log_std.detach().cpu().exp())
        mu = self.compat.detach().cpu().double()
        mu = (0.5 * (mu + mu.T)).float()  # float32 values: what the checkpoint stores
        compat = tuple(tuple(float(x) for x in row) for row in mu.tolist())
        return LearnedCRFParams(w1=w1, sa=sa, sb=sb, w2=w2, sg=sg, compat=compat,
                                normalization=self.normalization)  # fmt: skip

    def checkpoint_entry(self, test_iters: int = 10) -> dict:
        """The checkpoint's ``crf`` entry (plain data and one tensor; see learned.py)."""
        p = self.crf_params()
        entry = {k: getattr(p, k) for k in ("w1", "sa", "sb", "w2", "sg")}
        entry["compat"] = p.compat_matrix(dtype=torch.float32)
        entry.update(normalization=self.normalization, iters=int(test_iters), kind="end-to-end")
        return entry

    def forward(self, scores: torch.Tensor, images, iters: int | None = None) -> torch.Tensor:
        """Logits (B, L, H, W) after ``iters`` (default ``self.iters``) mean-field updates."""
        iters = self.iters if iters is None else int(iters)
        if iters < 0:
            raise ValueError(f"iters: must be >= 0, got {iters}")
        if scores.dim() != 4 or scores.shape[1] != self.num_classes:
            raise ValueError(f"scores: expected (B, {self.num_classes}, H, W), "
                             f"got {tuple(scores.shape)}")  # fmt: skip
        images = as_rgb_batch(images)
        b, c, h, w = scores.shape
        if images.shape[0] != b or tuple(images.shape[1:3]) != (h, w):
            raise ValueError(f"images: shape {tuple(images.shape)} does not match scores "
                             f"{tuple(scores.shape)}")  # fmt: skip
        neg_unary = scores.flatten(2).transpose(1, 2)  # (B, N, L): -U = scores
        if iters == 0:
            return scores
        terms = self.prepared_terms(images.to(scores.device), scores.dtype)
        q = torch.softmax(neg_unary, dim=-1)
        use_ckpt = self.checkpoint and torch.is_grad_enabled()
        for _ in range(iters - 1):
            if use_ckpt:
                q = _checkpoint(mean_field_step, neg_unary, q, terms, use_reentrant=False)
            else:
                q = mean_field_step(neg_unary, q, terms)
        if use_ckpt:
            logits = _checkpoint(_last_logits, neg_unary, q, terms, use_reentrant=False)
        else:
            logits = _last_logits(neg_unary, q, terms)
        return logits.transpose(1, 2).reshape(b, c, h, w)

    def prepared_terms(self, images: torch.Tensor, dtype: torch.dtype) -> list[PreparedTerm]:
        """The bilateral and Gaussian terms (filters, normalisers, compatibilities)."""
        device = images.device
        raw = bilateral_features(images, 1.0, 1.0, device=device).to(dtype)  # (x, y, R, G, B)
        std = self.log_std.to(dtype).exp()
        one = torch.ones(2, dtype=dtype, device=device)
        bil_scale = torch.cat([one / std[0], one.new_ones(3) / std[1]])
        mu = self.compat.to(dtype)
        mu = 0.5 * (mu + mu.T)
        weights = self.weights.to(dtype)
        specs = ((raw, bil_scale, weights[0]), (raw[..., :2], one / std[2], weights[1]))
        return [self._term(r.contiguous(), s, -wk * mu) for r, s, wk in specs]

    def _term(self, raw, scale, matrix) -> PreparedTerm:
        filt = self._filter(raw, scale)
        b, n, _ = raw.shape
        pre = post = None
        if self.normalization != "none":
            norm = filt.apply(raw.new_ones(b, n, 1)) + 1e-20
            if self.normalization == "symmetric":
                pre = post = norm.rsqrt()
            elif self.normalization == "after":
                post = norm.reciprocal()
            else:  # "before"
                pre = norm.reciprocal()
        return PreparedTerm(filt, pre, post, 1.0, None, matrix)

    def _filter(self, raw: torch.Tensor, scale: torch.Tensor):
        features = raw * scale
        if self.method == "dense":
            from deeplabv1.crf.torch.dense import DenseFilter

            return DenseFilter(features)  # exact autograd, also w.r.t. the scales
        from deeplabv1.crf.torch.lattice import PermutohedralLattice

        lattice = PermutohedralLattice(features.detach())
        if not scale.requires_grad:
            return lattice
        from deeplabv1.crf.torch.scaled_filter import ScaledFilter

        return ScaledFilter(raw, scale, lattice)

    def extra_repr(self) -> str:
        sa, sb, sg = (round(math.exp(float(x)), 3) for x in self.log_std.detach())
        return (
            f"num_classes={self.num_classes}, iters={self.iters}, method={self.method}, "
            f"normalization={self.normalization}, std=({sa}, {sb}, {sg}), "
            f"learn_std={self.log_std.requires_grad}, checkpoint={self.checkpoint}"
        )


def _last_logits(neg_unary: torch.Tensor, q: torch.Tensor, terms) -> torch.Tensor:
    """The last update's logits -U + sum of messages (softmax of them = Q)."""
    m = neg_unary
    for term in terms:
        m = m + pairwise_message(q, term)
    return m
