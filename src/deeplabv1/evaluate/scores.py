"""Saved score maps: the network's coarse fc8 output per image, so the CRF can rerun without it.

A score folder holds one ``<id>.npz`` per image with ``scores`` (C, h, w) on the stride-8 grid
(float32, or float16 when asked), the image's ``height`` and ``width`` and the zoom ``factor``
(8), plus ``meta.json`` describing the run (arch, num_classes, test_size, weights). Storing the
coarse map instead of the full-resolution one is ~64x smaller (65x65 instead of 513x513 for a
padded VOC image) and loses nothing: the full-resolution scores are the deterministic bilinear
(align-corners) zoom of the coarse map, cropped to the image, recomputed by ``full_scores``.
Every file is written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeplabv1.errors import DeepLabError
from deeplabv1.io import atomic_path, atomic_write_json

META_NAME = "meta.json"
SCORE_DTYPES = ("float32", "float16")


def save_scores(
    folder: str | os.PathLike,
    image_id: str,
    coarse: torch.Tensor | np.ndarray,
    height: int,
    width: int,
    *,
    factor: int = 8,
    dtype: str = "float32",
    compress: bool = False,
) -> Path:
    """Write one image's coarse scores (C, h, w) to ``folder/<image_id>.npz`` atomically."""
    if dtype not in SCORE_DTYPES:
        raise DeepLabError(f"score dtype must be one of {SCORE_DTYPES}, got {dtype!r}")
    if isinstance(coarse, torch.Tensor):
        coarse = coarse.detach().float().cpu().numpy()
    coarse = np.asarray(coarse)
    if coarse.ndim != 3:
        raise DeepLabError(f"scores of {image_id} must be (C, h, w), got shape {coarse.shape}")
    path = Path(folder) / f"{image_id}.npz"
    arrays = {
        "scores": coarse.astype(dtype),
        "height": np.int64(height),
        "width": np.int64(width),
        "factor": np.int64(factor),
    }
    save = np.savez_compressed if compress else np.savez
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        save(f, **arrays)
    return path


def load_scores(folder: str | os.PathLike, image_id: str) -> tuple[np.ndarray, int, int, int]:
    """Read ``folder/<image_id>.npz``: (coarse scores float32 (C, h, w), height, width, factor)."""
    path = Path(folder) / f"{image_id}.npz"
    if not path.is_file():
        raise DeepLabError(f"{path}: score file not found (was it saved with --save-scores?)")
    try:
        with np.load(path, allow_pickle=False) as z:
            coarse = np.asarray(z["scores"], dtype=np.float32)
            height, width, factor = int(z["height"]), int(z["width"]), int(z["factor"])
    except (OSError, KeyError, ValueError) as exc:
        raise DeepLabError(f"{path}: not a readable score file ({exc})") from exc
    if coarse.ndim != 3:
        raise DeepLabError(f"{path}: scores must be (C, h, w), got shape {coarse.shape}")
    return coarse, height, width, factor


def full_scores(coarse: torch.Tensor | np.ndarray, height: int, width: int, factor: int = 8):
    """Full-resolution scores (C, height, width): zoom the coarse map x factor and crop.

    As ``deeplabv1.models.inference.predict_scores``: where the zoomed map is smaller than the
    image, its last row / column is repeated.
    """
    import torch.nn.functional as F

    from deeplabv1.models.inference import zoom_scores

    coarse = torch.as_tensor(coarse, dtype=torch.float32)
    squeeze = coarse.dim() == 3
    zoomed = zoom_scores(coarse[None] if squeeze else coarse, factor=factor)
    short_h, short_w = max(0, height - zoomed.shape[-2]), max(0, width - zoomed.shape[-1])
    if short_h or short_w:
        zoomed = F.pad(zoomed, (0, short_w, 0, short_h), mode="replicate")
    zoomed = zoomed[..., :height, :width]
    return zoomed[0] if squeeze else zoomed


def write_meta(folder: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Write the folder's ``meta.json`` (what produced these scores)."""
    atomic_write_json(Path(folder) / META_NAME, meta)


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """Read a score folder's ``meta.json``; errors name the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DeepLabError(f"{folder}: score folder not found")
    path = folder / META_NAME
    if not path.is_file():
        raise DeepLabError(f"{path}: missing; not a score folder written by `deeplabv1 eval`")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DeepLabError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise DeepLabError(f"{path}: expected a JSON object")
    return meta
