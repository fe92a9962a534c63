"""File-level CRF work for the ``deeplabv1 crf`` command: read, check, infer, write.

Score files are NumPy ``.npy`` arrays (C, H, W) of float raw (pre-softmax) network scores at
the image's full resolution (or softmax probabilities, with ``probabilities=True``). Images are
read by ``deeplabv1.predict.images.load_image``, the reader ``predict`` uses (every mode,
EXIF orientation, a size limit; no torch). Outputs are VOC palette PNGs of the arg-max labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deeplabv1.errors import DeepLabError
from deeplabv1.predict.images import IMAGE_SUFFIXES, MAX_PIXELS, load_image

__all__ = ["crf_file", "load_scores", "match_pairs"]


def load_scores(path: str | Path, probabilities: bool = False) -> np.ndarray:
    """A (C, H, W) finite float score (or probability) array from a .npy file, as float32."""
    path = Path(path)
    try:
        scores = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise DeepLabError(f"{path}: scores file not found") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise DeepLabError(f"{path}: not a readable .npy array ({exc})") from exc
    if not isinstance(scores, np.ndarray):  # np.load opens .npz archives too, whatever the name
        if hasattr(scores, "close"):
            scores.close()
        raise DeepLabError(f"{path}: a .npz archive, not a .npy array; save the (C, H, W) "
                           "scores with numpy.save")  # fmt: skip
    if scores.ndim != 3 or min(scores.shape) < 1:
        raise DeepLabError(f"{path}: expected a (C, H, W) score array, got shape {scores.shape}")
    if scores.shape[0] < 2 or scores.shape[0] > 256:
        raise DeepLabError(f"{path}: expected 2..256 classes on axis 0, got {scores.shape[0]}")
    if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
        raise DeepLabError(f"{path}: expected float scores, got dtype {scores.dtype}")
    scores = scores.astype(np.float32, copy=False)
    if not np.isfinite(scores).all():
        raise DeepLabError(f"{path}: scores contain NaN or infinite values")
    if probabilities and (scores.min() < 0 or scores.max() > 1 + 1e-3):
        raise DeepLabError(f"{path}: --probabilities given but values lie outside [0, 1]")
    return scores


def crf_file(
    image_path,
    scores_path,
    out_path,
    params,
    *,
    iters: int = 10,
    normalization: str = "after",
    device: str = "cpu",
    probabilities: bool = False,
    background: str = "white",
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Run the DeepLab CRF on one image / score-file pair and write the label PNG; returns the
    labels (H, W) uint8.

    ``device="cpu"`` runs the torch-free engine (``deeplab_crf_np``: torch is not imported
    unless numba is absent or disabled); ``"cuda"`` runs torch's ``deeplab_crf`` on the GPU.
    """
    from deeplabv1.data.palette import save_label_png

    rgb = load_image(image_path, background=background, max_pixels=max_pixels)
    scores = load_scores(scores_path, probabilities)
    if scores.shape[1:] != rgb.shape[:2]:
        raise DeepLabError(
            f"{scores_path}: scores are {scores.shape[1]} x {scores.shape[2]} but image "
            f"{image_path} is {rgb.shape[0]} x {rgb.shape[1]} (H x W): upsample scores first"
        )
    options = {"iters": iters, "normalization": normalization, "probabilities": probabilities}
    if str(device) == "cpu":
        from deeplabv1.crf.deeplab import deeplab_crf_np

        q = deeplab_crf_np(scores, rgb, params, **options)
    else:
        import torch

        from deeplabv1.crf.deeplab import deeplab_crf

        with torch.no_grad():
            q = deeplab_crf(torch.from_numpy(scores), rgb, params, device=device, **options)
            q = q.cpu().numpy()
    labels = q.argmax(0).astype(np.uint8)
    del q
    save_label_png(out_path, labels)
    return labels


def match_pairs(image_dir: Path, scores_dir: Path):
    """(pairs [(stem, image, scores)], images without scores, scores without images) by stem."""
    for d in (image_dir, scores_dir):
        if not Path(d).is_dir():
            raise DeepLabError(f"{d}: not a directory")
    images = {
        p.stem: p
        for p in sorted(Path(image_dir).iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    }
    scores = {p.stem: p for p in sorted(Path(scores_dir).glob("*.npy")) if p.is_file()}
    pairs = [(s, images[s], scores[s]) for s in sorted(images.keys() & scores.keys())]
    return pairs, sorted(images.keys() - scores.keys()), sorted(scores.keys() - images.keys())
