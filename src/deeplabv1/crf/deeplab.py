"""The DeepLab convention for the dense CRF as one call (SPEC section 4).

Unary = the negated upsampled score map, colour features from the original RGB image,
a bilateral term (w1, sa, sb) plus a Gaussian term (w2, sg), both Potts, 10 iterations and the
per-pixel "after" normalisation of the 2011 code that DeepLab used.
"""

from __future__ import annotations

import numpy as np
import torch

from deeplabv1.crf.features import as_rgb_batch, bilateral_features, gaussian_features
from deeplabv1.crf.meanfield import PairwiseTerm, mean_field
from deeplabv1.crf.params import CRFParams, get_params
from deeplabv1.crf.unary import unary_from_probabilities

__all__ = ["deeplab_crf", "deeplab_terms"]


def deeplab_terms(images, params: CRFParams, normalization: str = "after", device=None):
    """The two Potts PairwiseTerms (bilateral, Gaussian) for (B, H, W, 3) uint8 RGB images."""
    images = as_rgb_batch(images)
    batch, height, width, _ = images.shape
    device = images.device if device is None else torch.device(device)
    # LearnedCRFParams (crf/learned.py, trained end to end): matrix compatibilities w_k * mu
    compat = params.term_compats(device) if hasattr(params, "term_compats") else None
    w1, w2 = compat if compat is not None else (params.w1, params.w2)
    return [
        PairwiseTerm(bilateral_features(images, params.sa, params.sb, device=device),
                     w1, normalization),
        PairwiseTerm(gaussian_features(height, width, params.sg, batch, device=device),
                     w2, normalization),
    ]  # fmt: skip


def deeplab_crf(
    scores,
    image,
    params: str | CRFParams = "deeplab-largefov",
    iters: int = 10,
    normalization: str = "after",
    device=None,
    *,
    probabilities: bool = False,
    method: str = "lattice",
) -> torch.Tensor:
    """CRF marginals for full-resolution scores (C, H, W) or (B, C, H, W) and RGB image(s).

    ``scores`` are raw (pre-softmax) network scores, tensor or ndarray; with
    ``probabilities=True`` they are softmax probabilities instead (unary -log p, clipped at
    1e-5). ``image`` is (H, W, 3) or (B, H, W, 3) uint8 RGB of the same size. ``params`` is a
    variant name of DEEPLAB_CRF_PARAMS or a CRFParams. Returns probabilities of the scores'
    shape as a float32 tensor on the scores' device (or on ``device`` when given, which is also
    where the computation runs).
    """
    params = get_params(params)
    if isinstance(scores, np.ndarray):
        scores = torch.from_numpy(np.array(scores, dtype=np.float32))
    if not isinstance(scores, torch.Tensor) or scores.dim() not in (3, 4):
        raise ValueError("scores: expected a (C, H, W) or (B, C, H, W) array")
    shape = scores.shape
    batched = scores.dim() == 4
    scores4 = scores if batched else scores.unsqueeze(0)
    images = as_rgb_batch(image)
    if images.shape[0] != scores4.shape[0] or tuple(images.shape[1:3]) != tuple(shape[-2:]):
        raise ValueError(
            f"image: shape {tuple(images.shape)} does not match scores {tuple(shape)} "
            "(expected the same batch size and H x W)"
        )
    device = scores.device if device is None else torch.device(device)
    b, c, h, w = scores4.shape
    flat = scores4.to(device=device, dtype=torch.float32).reshape(b, c, h * w)
    unary = unary_from_probabilities(flat) if probabilities else flat.neg()
    terms = deeplab_terms(images.to(device), params, normalization, device)
    q = mean_field(unary, terms, iters=iters, method=method)
    return q.reshape(shape)
