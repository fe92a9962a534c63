"""The Semantic Boundaries Dataset (Hariharan et al., ICCV 2011): layout and ``.mat`` labels.

SBD extracts to ``benchmark_RELEASE/dataset/`` with ``img/<id>.jpg``, ``cls/<id>.mat``,
``train.txt`` (8,498 ids) and ``val.txt`` (2,857 ids). Each ``cls/<id>.mat`` holds a MATLAB
struct ``GTcls`` with fields ``Segmentation`` (H x W uint8 class indices 0..20),
``Boundaries`` (20 x 1 cell of sparse edge maps) and ``CategoriesPresent``. SBD draws no void
(255) band around objects: its class maps cover every pixel with 0..20.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deeplabv1.data.palette import IGNORE_INDEX
from deeplabv1.errors import DeepLabError

SBD_SPLITS = ("train", "val")


def resolve_sbd_root(root: str | os.PathLike) -> Path:
    """The folder with cls/ and train.txt: ``benchmark_RELEASE/dataset``, given it or a parent."""
    root = Path(root)
    for cand in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (cand / "cls").is_dir():
            return cand
    if not root.exists():
        raise DeepLabError(f"{root}: SBD folder not found")
    raise DeepLabError(
        f"{root}: not an SBD folder (no cls/ in it, in dataset/ or in benchmark_RELEASE/dataset/)"
    )


def _field(struct, name: str):
    """A field of a loadmat struct (record array or mat_struct), or None."""
    if hasattr(struct, "dtype") and struct.dtype.names is not None:
        if name not in struct.dtype.names:
            return None
        value = struct[name]
        while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
            value = value.reshape(-1)[0]
        return value
    return getattr(struct, name, None)


def read_sbd_mat(path: str | os.PathLike, num_classes: int = 21) -> np.ndarray:
    """Class indices (uint8, H x W) from an SBD ``cls/<id>.mat`` (``GTcls.Segmentation``).

    Errors name the file: unreadable or not MATLAB, no GTcls struct, no 2-D Segmentation,
    values outside 0..num_classes-1 (255 is accepted as void though SBD has none).
    scipy's reader is not hardened: some corrupt uncompressed files crash the interpreter, so
    ``data prepare`` calls this in worker processes.
    """
    from scipy.io import loadmat

    path = Path(path)
    try:
        mat = loadmat(path)
    except FileNotFoundError as exc:
        raise DeepLabError(f"{path}: SBD label file not found") from exc
    except Exception as exc:  # scipy raises ValueError/TypeError/OSError/... on bad files
        raise DeepLabError(f"{path}: cannot read SBD .mat file ({exc})") from exc
    gt = mat.get("GTcls")
    if gt is None:
        raise DeepLabError(f"{path}: no GTcls struct (is this an SBD cls/ file?)")
    gt = np.asarray(gt)
    if gt.dtype.names is None or gt.size != 1:
        raise DeepLabError(f"{path}: GTcls is not a 1x1 MATLAB struct")
    seg = _field(gt.reshape(-1)[0:1], "Segmentation")
    if seg is None:
        raise DeepLabError(f"{path}: GTcls has no Segmentation field")
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.size == 0 or not np.issubdtype(seg.dtype, np.number):
        raise DeepLabError(f"{path}: GTcls.Segmentation is not a 2-D numeric array")
    if np.issubdtype(seg.dtype, np.floating) and not np.all(seg == np.round(seg)):
        raise DeepLabError(f"{path}: GTcls.Segmentation holds non-integer values")
    valid = ((seg >= 0) & (seg < num_classes)) | (seg == IGNORE_INDEX)
    if not valid.all():
        bad = np.unique(seg[~valid])[:10].tolist()
        raise DeepLabError(f"{path}: label values {bad} outside 0..{num_classes - 1} and 255")
    return seg.astype(np.uint8)


def write_sbd_mat(
    path: str | os.PathLike, segmentation: np.ndarray, compress: bool = True
) -> None:
    """Write class indices as an SBD ``cls/<id>.mat`` (GTcls with the release's three fields).

    For tests and synthetic data: ``Boundaries`` holds each class's inner boundary pixels as
    a sparse map (a 20 x 1 cell), ``CategoriesPresent`` the classes present (a column).
    Compressed (zlib) by default, as MATLAB writes v7 files.
    """
    import scipy.io
    import scipy.sparse
    from scipy import ndimage

    seg = np.asarray(segmentation, dtype=np.uint8)
    bounds = np.empty((20, 1), dtype=object)
    for c in range(1, 21):
        mask = seg == c
        edge = mask & ~ndimage.binary_erosion(mask)
        bounds[c - 1, 0] = scipy.sparse.csc_matrix(edge.astype(np.uint8))
    present = np.unique(seg[(seg > 0) & (seg != IGNORE_INDEX)]).astype(np.uint8).reshape(-1, 1)
    gt = {"Segmentation": seg, "Boundaries": bounds, "CategoriesPresent": present}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from deeplabv1.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        scipy.io.savemat(f, {"GTcls": gt}, do_compression=compress)


def sbd_split_ids(sbd_root: Path, split: str) -> list[str]:
    """Ids of SBD's ``train`` or ``val`` list."""
    from deeplabv1.data.voc import read_ids

    return read_ids(sbd_root / f"{split}.txt")
