"""Saved score maps: the network's coarse fc8 output per image, so the CRF can rerun without it.

A score folder holds one ``<id>.npz`` per image with ``scores`` (C, h, w) on the stride-8 grid
(float32, or float16 when asked), the image's ``height`` and ``width``, the zoom ``factor`` (8)
and the ``crop`` cut at the start of the zoomed map (7 for DeepLab's test network, else 0;
absent in older files: 0), plus ``meta.json`` describing the run (arch, num_classes, test_size,
weights). Storing the coarse map instead of the full-resolution one is ~64x smaller (65x65
instead of 513x513 for a padded VOC image) and loses nothing: the full-resolution scores are the
deterministic bilinear (align-corners) zoom of the coarse map, cropped to the image, recomputed
by ``full_scores``. MSc's released test network sums its maps at full resolution: those are
stored at the image's size with factor 1 (float16 and ``compress`` help there). Every file is
written atomically.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeplabv1.errors import DeepLabError
from deeplabv1.io import atomic_path, atomic_write_json

META_NAME = "meta.json"
SCORE_DTYPES = ("float32", "float16")
SCORE_MEMBERS = {f"{k}.npy" for k in ("scores", "height", "width", "factor", "crop")}


def save_scores(
    folder: str | os.PathLike,
    image_id: str,
    coarse: torch.Tensor | np.ndarray,
    height: int,
    width: int,
    *,
    factor: int = 8,
    crop: int = 0,
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
        "crop": np.int64(crop),
    }
    save = np.savez_compressed if compress else np.savez
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        save(f, **arrays)
    return path


def load_scores(
    folder: str | os.PathLike, image_id: str
) -> tuple[np.ndarray, int, int, int, int]:
    """Read ``folder/<image_id>.npz``: (coarse scores float32 (C, h, w), height, width, factor,
    crop)."""
    from deeplabv1.io import check_npy_header, regular_file

    path = Path(folder) / f"{image_id}.npz"
    if not path.exists():
        raise DeepLabError(f"{path}: score file not found (was it saved with --save-scores?)")
    if regular_file(path, "score file").st_size == 0:
        raise DeepLabError(f"{path}: not a readable score file (the file is empty)")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with z:
            dtypes = {}
            for info in z.zip.infolist():  # before numpy allocates what a header declares
                if info.filename not in SCORE_MEMBERS:
                    continue
                with z.zip.open(info) as f:
                    dtypes[info.filename] = check_npy_header(f, info.file_size)[1]
            dtype = dtypes["scores.npy"]
            if dtype.kind != "f":
                raise ValueError(f"scores of dtype {dtype}, expected float")
            coarse = np.asarray(z["scores"], dtype=np.float32)
            height, width, factor = (_integer(z, k) for k in ("height", "width", "factor"))
            crop = _integer(z, "crop") if "crop" in z.files else 0
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, (EOFError, zipfile.BadZipFile, zlib.error)):
            why = f"damaged or cut short: {why}"
        raise DeepLabError(f"{path}: not a readable score file ({why})") from exc
    if coarse.ndim != 3 or min(coarse.shape) < 1:
        raise DeepLabError(f"{path}: scores must be (C, h, w), got shape {coarse.shape}")
    if height < 1 or width < 1:
        raise DeepLabError(f"{path}: bad image size {width}x{height}")
    if factor < 1 or crop < 0:
        raise DeepLabError(f"{path}: bad factor {factor} or crop {crop}")
    for side, image_side in zip(coarse.shape[1:], (height, width)):
        zoomed = (side - 1) * factor + 1  # what full_scores allocates, then cuts at crop
        if crop >= zoomed or zoomed > 2 * max(image_side + crop, MAX_PADDED):
            raise DeepLabError(f"{path}: scores {coarse.shape} zoomed x{factor} and cut at "
                               f"{crop} do not fit a {width}x{height} image")
    if not np.isfinite(coarse).all():
        raise DeepLabError(f"{path}: scores contain NaN or infinite values")
    return coarse, height, width, factor, crop


# The largest padded input a score map may stand for whatever the image size (DeepLab's test
# crop); a zoomed map more than twice that or the image is a wrong factor or a damaged file.
MAX_PADDED = 513


def _integer(z, key: str) -> int:
    """The integer scalar ``key`` of a score file (ValueError otherwise)."""
    value = z[key]
    if value.shape != () or value.dtype.kind not in "iu":
        raise ValueError(f"{key} is not an integer ({value.dtype} of shape {value.shape})")
    return int(value)


def full_scores(
    coarse: torch.Tensor | np.ndarray, height: int, width: int, factor: int = 8, crop: int = 0
):
    """Full-resolution scores (C, height, width): zoom the coarse map x factor, cut ``crop``
    pixels at the start, keep the image (``deeplabv1.models.inference.crop_zoomed``: where the
    zoomed map is smaller than the image, its last row / column is repeated)."""
    from deeplabv1.models.inference import crop_zoomed

    return crop_zoomed(torch.as_tensor(coarse, dtype=torch.float32), height, width, factor, crop)


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
    except UnicodeDecodeError:
        raise DeepLabError(f"{path}: not readable JSON (not UTF-8 text)") from None
    if not isinstance(meta, dict):
        raise DeepLabError(f"{path}: expected a JSON object")
    return meta
