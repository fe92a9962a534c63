"""The DeepLab convention for the dense CRF as one call.

Unary = the negated upsampled score map, colour features from the original RGB image,
a bilateral term (w1, sa, sb) plus a Gaussian term (w2, sg), both Potts, 10 iterations and the
per-pixel "after" normalisation of the 2011 code that DeepLab used.

The convention lives once, on numpy arrays (``deeplab_features``, ``_unary_np``, the checks);
two engines run it:

- the torch-free CPU engine (``deeplabv1.crf.engine``, numba kernels), Potts and learned
  (matrix) compatibilities alike: :func:`deeplab_crf_np` (numpy in, numpy out, never imports
  torch) and :func:`deeplab_crf` for CPU tensors (it wraps the same call with
  ``torch.from_numpy``);
- torch's ``mean_field`` over :func:`deeplab_terms`: CUDA, ``method="dense"`` or a custom
  filter, gradients, and no numba (or ``DEEPLABV1_CRF_NUMBA=0``).
"""

from __future__ import annotations

import sys

import numpy as np

from deeplabv1.crf import require_torch
from deeplabv1.crf.engine import cache as engine_cache
from deeplabv1.crf.engine import meanfield as engine_mf
from deeplabv1.crf.engine import threads as engine_threads
from deeplabv1.crf.features import bilateral_features_np, gaussian_features_np
from deeplabv1.crf.params import CRFParams, get_params

__all__ = ["deeplab_crf", "deeplab_crf_np", "deeplab_features", "deeplab_terms"]

PROB_CLIP = 1e-5  # smallest probability kept by the unary -log p (pydensecrf's rule)


def _host_array(x, name: str) -> np.ndarray:
    """An ndarray, or a torch tensor brought to the host (torch is never imported here)."""
    if isinstance(x, np.ndarray):
        return x
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        _check_device(x.device, name)
        return x.detach().cpu().numpy()
    raise ValueError(f"{name}: expected a numpy array or tensor, got {type(x).__name__}")


def _check_device(device, what: str) -> None:
    """ValueError for a device that cannot run or hold data (meta; CUDA without a GPU)."""
    import torch

    if device.type == "meta":
        raise ValueError(f"{what}: a meta-device tensor holds no data; give real values")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what}: device {str(device)!r} asked for, but torch has no CUDA GPU "
                         "here (CPU-only build or no GPU); use device='cpu'")  # fmt: skip


def _as_images(image) -> np.ndarray:
    """(H, W, 3) or (B, H, W, 3) uint8 RGB (numpy or torch) as a (B, H, W, 3) uint8 array."""
    images = _host_array(image, "image")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"image: expected (H, W, 3) or (B, H, W, 3) RGB, got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 colours 0-255, got {images.dtype}")
    return np.ascontiguousarray(images)


def _check_pair(scores_shape: tuple, images: np.ndarray) -> None:
    """ValueError unless scores (C, H, W) / (B, C, H, W) and images (B, H, W, 3) match."""
    if len(scores_shape) not in (3, 4) or min(scores_shape) < 1:
        raise ValueError("scores: expected a (C, H, W) or (B, C, H, W) array")
    batch = scores_shape[0] if len(scores_shape) == 4 else 1
    if images.shape[0] != batch or tuple(images.shape[1:3]) != tuple(scores_shape[-2:]):
        raise ValueError(
            f"image: shape {images.shape} does not match scores {tuple(scores_shape)} "
            "(expected the same batch size and H x W)"
        )


def deeplab_features(images, params: CRFParams) -> list[np.ndarray]:
    """The two terms' features as float32 arrays over B*H*W pixels (image-major, pixel
    y * W + x): bilateral (x/sa, y/sa, R/sb, G/sb, B/sb) (P, 5), Gaussian (x/sg, y/sg) (P, 2)."""
    images = _as_images(images)
    batch, height, width, _ = images.shape
    bil = [bilateral_features_np(img, params.sa, params.sb) for img in images]
    gauss = gaussian_features_np(height, width, params.sg)
    if batch == 1:
        return [bil[0], gauss]
    return [np.concatenate(bil), np.tile(gauss, (batch, 1))]


def _unary_np(scores: np.ndarray, probabilities: bool) -> np.ndarray:
    """Pixel-major energies (B*H*W, padded C) float32 from scores (B, C, H, W): -scores, or
    -log(clip(p)); written straight in the engine's layout (engine_mf.unary_buffer)."""
    b, c, h, w = scores.shape
    flat = scores.reshape(b, c, h * w)
    if probabilities and ((flat < 0).any() or (flat > 1 + 1e-3).any()):
        raise ValueError("probabilities: values outside [0, 1]")
    buf = engine_mf.unary_buffer(b * h * w, c)
    unary = buf[:, :c].reshape(b, h * w, c)
    if probabilities:
        np.clip(flat.transpose(0, 2, 1), np.float32(PROB_CLIP), np.float32(1.0), out=unary)
        np.log(unary, out=unary)
    np.negative(unary if probabilities else flat.transpose(0, 2, 1), out=unary)
    if not np.isfinite(unary).all():
        raise ValueError("unary: contains NaN or infinite energies")
    return buf


def _compats(params: CRFParams):
    """The two terms' compatibilities: Potts weights, or for parameters learned end to end
    (LearnedCRFParams) the matrices w1 * mu and w2 * mu."""
    if hasattr(params, "compat"):
        mu = np.asarray(params.compat, np.float32)
        return np.float32(params.w1) * mu, np.float32(params.w2) * mu
    return params.w1, params.w2


def _engine_terms(images: np.ndarray, params: CRFParams, normalization: str, threads: int):
    """NumpyTerms of the two terms."""
    n = images.shape[1] * images.shape[2]
    terms = []
    for feats, compat in zip(deeplab_features(images, params), _compats(params)):
        lat = engine_cache.cached_lattice(feats, n, threads, copy=False)  # feats: ours
        lat.normalizer(threads)  # computed once per lattice, on these threads
        terms.append(engine_mf.prepare_term(lat, compat, normalization))
    return terms


def _run_engine(scores4, images, params, iters, normalization, probabilities, threads):
    """Marginals (B, C, H, W) float32 by the torch-free engine, or None where it cannot run
    (numba absent or disabled)."""
    if not engine_threads.available():
        return None
    if normalization not in ("symmetric", "after", "before", "none"):
        raise ValueError(f"normalization: unknown mode {normalization!r}")
    if int(iters) < 0:
        raise ValueError(f"iters: must be >= 0, got {iters}")
    unary = _unary_np(scores4, probabilities)
    threads = engine_threads.use_threads(threads)
    terms = _engine_terms(images, params, normalization, threads)
    b, c, h, w = scores4.shape
    out = np.empty((b, c, h * w), np.float32)
    q = engine_mf.iterate(unary, terms, int(iters), threads, out, num_labels=c)
    return q.reshape(scores4.shape)


def deeplab_crf_np(
    scores: np.ndarray,
    image: np.ndarray,
    params: str | CRFParams = "deeplab-largefov",
    iters: int = 10,
    normalization: str = "after",
    *,
    probabilities: bool = False,
    threads: int | None = None,
) -> np.ndarray:
    """:func:`deeplab_crf` on numpy arrays: float32 marginals of the scores' shape (C, H, W)
    or (B, C, H, W) as an ndarray.

    Runs on the torch-free CPU engine (torch is not imported) on ``threads`` threads (None:
    the engine's setting, ``deeplabv1.crf.set_num_threads``), learned (matrix)
    compatibilities included. Where that engine cannot run (numba absent or
    ``DEEPLABV1_CRF_NUMBA=0``) it falls back to the torch CPU path, importing torch then.
    """
    params = get_params(params)
    scores = np.asarray(scores)
    if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
        raise ValueError(f"scores: expected real numbers, got dtype {scores.dtype}")
    scores = scores.astype(np.float32, copy=False)
    images = _as_images(image)
    _check_pair(scores.shape, images)
    scores4 = scores if scores.ndim == 4 else scores[None]
    q = _run_engine(scores4, images, params, iters, normalization, probabilities, threads)
    if q is None:
        torch = require_torch("deeplab_crf")

        with torch.no_grad():
            q = deeplab_crf(scores4, images, params, iters, normalization, "cpu",
                            probabilities=probabilities).numpy()  # fmt: skip
    return q.reshape(scores.shape)


def deeplab_terms(images, params: CRFParams, normalization: str = "after", device=None):
    """The two Potts PairwiseTerms (bilateral, Gaussian) for (B, H, W, 3) uint8 RGB images
    (on ``device``; default: the images' device, CPU for arrays)."""
    torch = require_torch("deeplab_crf")

    from deeplabv1.crf.torch.meanfield import PairwiseTerm

    if device is None:
        device = images.device if isinstance(images, torch.Tensor) else "cpu"
    device = torch.device(device)
    images = _as_images(images)
    batch, height, width, _ = images.shape
    # LearnedCRFParams (crf/learned.py, trained end to end): matrix compatibilities w_k * mu
    compat = params.term_compats(device) if hasattr(params, "term_compats") else None
    weights = compat if compat is not None else (params.w1, params.w2)
    return [
        PairwiseTerm(torch.from_numpy(f).view(batch, height * width, -1).to(device), w,
                     normalization)
        for f, w in zip(deeplab_features(images, params), weights)
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
):
    """CRF marginals for full-resolution scores (C, H, W) or (B, C, H, W) and RGB image(s).

    ``scores`` are raw (pre-softmax) network scores, tensor or ndarray; with
    ``probabilities=True`` they are softmax probabilities instead (unary -log p, clipped at
    1e-5). ``image`` is (H, W, 3) or (B, H, W, 3) uint8 RGB of the same size. ``params`` is a
    variant name of DEEPLAB_CRF_PARAMS or a CRFParams. Returns probabilities of the scores'
    shape as a float32 tensor on the scores' device (or on ``device`` when given, which is also
    where the computation runs). On the CPU (method "lattice", no gradient wanted; Potts or
    learned compatibilities) it runs :func:`deeplab_crf_np`'s engine on
    ``torch.get_num_threads()`` threads; for numpy in and out without torch, call
    :func:`deeplab_crf_np`.
    """
    torch = require_torch("deeplab_crf")

    params = get_params(params)
    if isinstance(scores, np.ndarray):
        scores = torch.from_numpy(np.array(scores, dtype=np.float32))
    if not isinstance(scores, torch.Tensor) or scores.dim() not in (3, 4):
        raise ValueError("scores: expected a (C, H, W) or (B, C, H, W) array")
    _check_device(scores.device, "scores")
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device: cannot use {device!r} ({exc})") from exc
        _check_device(device, "device")
    images = _as_images(image)
    _check_pair(tuple(scores.shape), images)
    shape = scores.shape
    scores4 = scores if scores.dim() == 4 else scores.unsqueeze(0)
    device = scores.device if device is None else torch.device(device)
    grad = torch.is_grad_enabled() and scores.requires_grad
    if device.type == "cpu" and method == "lattice" and not grad:
        host = scores4.detach().to(device="cpu", dtype=torch.float32).numpy()
        q = _run_engine(host, images, params, iters, normalization, probabilities,
                        torch.get_num_threads())  # fmt: skip
        if q is not None:
            return torch.from_numpy(q).reshape(shape)
    from deeplabv1.crf.torch.meanfield import mean_field
    from deeplabv1.crf.torch.unary import unary_from_probabilities

    b, c, h, w = scores4.shape
    flat = scores4.to(device=device, dtype=torch.float32).reshape(b, c, h * w)
    unary = unary_from_probabilities(flat) if probabilities else flat.neg()
    terms = deeplab_terms(images, params, normalization, device)
    q = mean_field(unary, terms, iters=iters, method=method)
    return q.reshape(shape)
