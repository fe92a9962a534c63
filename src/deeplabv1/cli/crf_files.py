"""File-level CRF work for ``deeplabv1 crf`` and ``deeplabv1 crf-search``: read, check, infer,
write.

Score files are NumPy ``.npy`` arrays (C, H, W) of float raw (pre-softmax) network scores (or
softmax probabilities, with ``probabilities``); ``channels_last`` reads (H, W, C) arrays. They
are at the image's full resolution, or at a network's output resolution with ``upsample``:

- ``upsample=N`` (an integer zoom factor; 8 for DeepLab) is DeepLab's bilinear zoom with
  aligned corners (Caffe's Interp layer, ``F.interpolate(scale_factor=N, align_corners=True)``):
  output pixel (y, x) reads the map at (y / N, x / N), so an h x w map covers
  ((h - 1) N + 1) x ((w - 1) N + 1) pixels. The zoomed map is cut to the image (a padded
  network input gives a larger one: up to 513 or twice the image, a larger zoom is an error
  that names a wrong factor); where it falls short, by at most N - 1 pixels (an unpadded
  input), its last row / column is repeated. A map of fewer than ceil(H / N) rows (or
  ceil(W / N) columns) is an error.
- ``upsample="image"`` is the bilinear resize with aligned corners straight to the image's
  size H x W (``F.interpolate(size=(H, W), align_corners=True)``): pixel y reads row
  y (h - 1) / (H - 1), column x reads x (w - 1) / (W - 1).

Images are read by ``deeplabv1.predict.images.load_image``, the reader ``predict`` uses (every
mode, EXIF orientation, a size limit; no torch). Outputs by suffix: ``.png`` a VOC palette PNG
of the arg-max labels, ``.npy`` the marginals (C, H, W) float32; both written atomically.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deeplabv1.errors import DeepLabError
from deeplabv1.predict.images import IMAGE_SUFFIXES, MAX_PIXELS, ImageSettings, load_image

__all__ = ["ScoreSettings", "crf_file", "load_scores", "match_pairs", "output_kind",
           "read_pair", "report_unmatched", "upsample_scores", "write_outputs"]  # fmt: skip

OUTPUT_KINDS = {".png": "labels", ".npy": "marginals"}


@dataclass
class ScoreSettings(ImageSettings):
    """How ``crf`` and ``crf-search`` read score files (and images): settings both configs
    inherit."""

    probabilities: bool = field(
        default=False, metadata={"help": "score files hold softmax probabilities"}
    )
    channels_last: bool = field(
        default=False, metadata={"help": "score files are (H, W, C) arrays, not (C, H, W)"}
    )
    upsample: str | None = field(
        default=None,
        metadata={"help": "low-resolution scores: N (bilinear, aligned corners, x N then cut "
                  "to the image; 8 for DeepLab) or 'image' (stretch to the image size)"},
    )  # fmt: skip

    def upsample_mode(self) -> int | str | None:
        """``--upsample`` as None, "image" or a zoom factor >= 1 (DeepLabError otherwise)."""
        value = self.upsample
        if value is None or str(value).strip().lower() == "image":
            return None if value is None else "image"
        text = str(value).strip()
        if not (text.isdigit() and int(text) >= 1):
            raise DeepLabError(f"upsample (--upsample) must be a zoom factor (a positive integer, "
                               f"8 for DeepLab) or 'image', got {value!r}")  # fmt: skip
        return int(text)


# The largest padded input a zoomed map may stand for whatever the image size (DeepLab's
# test crop); beyond it a zoom more than twice the image's size is a wrong factor.
MAX_PADDED = 513


def _has_npy_header(path: Path) -> bool:
    """Whether the file starts with the .npy magic string."""
    try:
        with open(path, "rb") as f:
            return f.read(6) == b"\x93NUMPY"
    except OSError:
        return False


def load_scores(path, probabilities: bool = False, channels_last: bool = False) -> np.ndarray:
    """A (C, H, W) finite float32 score (or probability) array from a .npy file; with
    ``channels_last`` the file holds (H, W, C)."""
    from deeplabv1.io import check_npy_header, regular_file

    path = Path(path)
    size = regular_file(path, "scores file").st_size
    try:
        with open(path, "rb") as f:
            if f.read(6) == b"\x93NUMPY":  # else np.load says what it is (.npz, pickle)
                f.seek(0)
                check_npy_header(f, size)
        scores = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise DeepLabError(f"{path}: scores file not found") from exc
    except (OSError, ValueError, EOFError) as exc:
        if "pickle" in str(exc) and _has_npy_header(path):  # dtype object: pickled items
            raise DeepLabError(f"{path}: an array of Python objects (stored with pickle), not "
                               "of numbers; save the (C, H, W) scores as a float array: "
                               "numpy.save(path, scores.astype(numpy.float32))") from None
        if "pickle" in str(exc):  # numpy's guess for any file without its header
            raise DeepLabError(f"{path}: not a .npy array file (no NumPy header); save the "
                               "(C, H, W) scores with numpy.save") from exc  # fmt: skip
        raise DeepLabError(f"{path}: not a readable .npy array ({exc})") from exc
    if not isinstance(scores, np.ndarray):  # np.load opens .npz archives too, whatever the name
        if hasattr(scores, "close"):
            scores.close()
        raise DeepLabError(f"{path}: a .npz archive, not a .npy array; save the (C, H, W) "
                           "scores with numpy.save")  # fmt: skip
    layout = "(H, W, C)" if channels_last else "(C, H, W)"
    if scores.ndim != 3 or min(scores.shape) < 1:
        raise DeepLabError(f"{path}: expected a {layout} score array, got shape {scores.shape}")
    classes = scores.shape[2] if channels_last else scores.shape[0]
    if classes < 2 or classes > 256:
        where = "the last axis" if channels_last else "axis 0 (--channels-last: the last axis)"
        raise DeepLabError(f"{path}: expected 2..256 classes on {where}, got shape "
                           f"{scores.shape}")  # fmt: skip
    if channels_last:
        scores = scores.transpose(2, 0, 1)
    if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
        raise DeepLabError(f"{path}: expected float scores, got dtype {scores.dtype}")
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    if not np.isfinite(scores).all():
        raise DeepLabError(f"{path}: scores contain NaN or infinite values")
    if probabilities and (scores.min() < 0 or scores.max() > 1 + 1e-3):
        raise DeepLabError(f"{path}: --probabilities given but values lie outside [0, 1]")
    return scores


def _axis_taps(n_out: int, n_in: int, step: float):
    """Bilinear taps along one axis: output i reads input position min(i * step, n_in - 1)."""
    pos = np.minimum(np.arange(n_out, dtype=np.float64) * step, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def upsample_scores(scores: np.ndarray, height: int, width: int, upsample: int | str) -> np.ndarray:
    """Bilinear, aligned-corners zoom of (C, h, w) ``scores`` to (C, height, width) float32.

    ``upsample`` is a zoom factor N (pixel y reads row y / N, clamped to the last row: DeepLab's
    x8 zoom cut to the image) or ``"image"`` (pixel y reads row y (h - 1) / (height - 1)).
    See the module doc.
    """
    c, h, w = scores.shape
    if upsample == "image":
        step_y = (h - 1) / (height - 1) if height > 1 else 0.0
        step_x = (w - 1) / (width - 1) if width > 1 else 0.0
    else:
        step_y = step_x = 1.0 / int(upsample)
    y0, y1, ty = _axis_taps(height, h, step_y)
    x0, x1, tx = _axis_taps(width, w, step_x)
    ty = ty[None, :, None]
    rows = scores[:, y0, :] * (1 - ty) + scores[:, y1, :] * ty  # (C, height, w)
    out = rows[:, :, x0] * (1 - tx)
    out += rows[:, :, x1] * tx
    return out.astype(np.float32, copy=False)


def fit_scores(scores: np.ndarray, scores_path, image_path, image_shape, upsample) -> np.ndarray:
    """``scores`` (C, h, w) at the image's size ``image_shape`` (H, W): as they are, or
    upsampled as ``upsample`` (None, a factor or "image") says; DeepLabError naming the file
    when they cannot fit."""
    (h, w), (height, width) = scores.shape[1:], image_shape
    size = f"{scores_path}: scores are {h} x {w} but image {image_path} is {height} x {width}"
    if upsample is None:
        if (h, w) != (height, width):
            raise DeepLabError(f"{size} (H x W): upsample scores first, or pass --upsample 8 "
                               "(DeepLab's x8 zoom) or --upsample image (stretch to the image); "
                               "(H, W, C) arrays need --channels-last")  # fmt: skip
        return scores
    if upsample != "image":
        if (h, w) == (height, width) and upsample > 1:
            raise DeepLabError(f"{size}: already the image's size; drop --upsample {upsample}")
        if h * upsample < height or w * upsample < width:
            raise DeepLabError(f"{size}: x{upsample} covers at most {h * upsample} x "
                               f"{w * upsample} pixels; wrong --upsample factor?")  # fmt: skip
        zoom_h, zoom_w = (h - 1) * upsample + 1, (w - 1) * upsample + 1
        if zoom_h > max(2 * height, MAX_PADDED) or zoom_w > max(2 * width, MAX_PADDED):
            raise DeepLabError(f"{size}: x{upsample} gives a {zoom_h} x {zoom_w} map, far "
                               "larger than the image (a padded network input is at most "
                               f"{MAX_PADDED} or twice the image); wrong --upsample "
                               "factor?")  # fmt: skip
    return upsample_scores(scores, height, width, upsample)


def read_pair(
    image_path,
    scores_path,
    *,
    probabilities: bool = False,
    channels_last: bool = False,
    upsample: int | str | None = None,
    background: str = "white",
    max_pixels: int = MAX_PIXELS,
) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 (H, W, 3), float32 scores (C, H, W) at the image's size) of one pair."""
    rgb = load_image(image_path, background=background, max_pixels=max_pixels)
    scores = load_scores(scores_path, probabilities, channels_last)
    return rgb, fit_scores(scores, scores_path, image_path, rgb.shape[:2], upsample)


def output_kind(path) -> str:
    """``"labels"`` for a .png output, ``"marginals"`` for .npy; DeepLabError for the rest."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_KINDS:
        what = f"suffix {suffix!r}" if suffix else "no suffix"
        raise DeepLabError(f"{path}: output has {what}: use .png (label map) or .npy "
                           "(marginals (C, H, W) float32)")  # fmt: skip
    return OUTPUT_KINDS[suffix]


def write_outputs(paths, q: np.ndarray) -> np.ndarray:
    """Write marginals ``q`` (C, H, W) to every path by its suffix (``output_kind``), all
    renamed into place together once complete; returns the labels (H, W) uint8."""
    from deeplabv1.data.palette import label_to_pil
    from deeplabv1.io import atomic_paths

    kinds = [output_kind(p) for p in paths]
    labels = q.argmax(0).astype(np.uint8)
    with atomic_paths(*paths) as tmps:
        for tmp, kind in zip(tmps, kinds):
            with open(tmp, "wb") as f:  # a file object: np.save would add .npy to the name
                if kind == "marginals":
                    np.save(f, np.ascontiguousarray(q, dtype=np.float32))
                else:
                    label_to_pil(labels).save(f, format="PNG")
    return labels


def crf_file(
    image_path,
    scores_path,
    out_paths,
    params,
    *,
    iters: int = 10,
    normalization: str = "after",
    device: str = "cpu",
    probabilities: bool = False,
    channels_last: bool = False,
    upsample: int | str | None = None,
    background: str = "white",
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Run the DeepLab CRF on one image / score-file pair and write ``out_paths`` (one path or
    several; ``.png`` labels, ``.npy`` marginals); returns the labels (H, W) uint8.

    ``device="cpu"`` runs the torch-free engine (``deeplab_crf_np``: torch is not imported
    unless numba is absent or disabled); ``"cuda"`` runs torch's ``deeplab_crf`` on the GPU.
    """
    paths = [out_paths] if isinstance(out_paths, (str, Path)) else list(out_paths)
    for path in paths:
        output_kind(path)  # before the work
    rgb, scores = read_pair(image_path, scores_path, probabilities=probabilities,
                            channels_last=channels_last, upsample=upsample,
                            background=background, max_pixels=max_pixels)  # fmt: skip
    options = {"iters": iters, "normalization": normalization, "probabilities": probabilities}
    if str(device) == "cpu":
        from deeplabv1.crf import deeplab_crf_np

        try:
            q = deeplab_crf_np(scores, rgb, params, **options)
        except ValueError as exc:  # parameters this image cannot take (e.g. tiny std devs)
            raise DeepLabError(f"{image_path}: {exc}") from exc
    else:
        import torch

        from deeplabv1.crf import deeplab_crf

        with torch.no_grad():
            q = deeplab_crf(torch.from_numpy(scores), rgb, params, device=device, **options)
            q = q.cpu().numpy()
    return write_outputs(paths, q)


def _by_stem(folder: Path, suffixes) -> dict[str, list[Path]]:
    """The files of ``folder`` with one of ``suffixes`` (any case), by stem."""
    found: dict[str, list[Path]] = {}
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and p.suffix.lower() in suffixes:
            found.setdefault(p.stem, []).append(p)
    return found


def match_pairs(image_dir: Path, scores_dir: Path):
    """(pairs [(stem, image, scores)], images without scores, scores without images, stems
    with more than one image, stems with more than one score file) by stem; suffixes in any
    case (``.PNG``, ``.NPY``). A stem with several images (``a.png`` and ``a.jpg``) or score
    files (``a.npy`` and ``a.NPY``) is left out, described as ``"a (a.jpg, a.png)"``: which
    ones belong together is unknown."""
    for d in (image_dir, scores_dir):
        if not Path(d).is_dir():
            raise DeepLabError(f"{d}: not a directory")
    found = _by_stem(image_dir, IMAGE_SUFFIXES)
    found_scores = _by_stem(scores_dir, (".npy",))
    several = {s for f in (found, found_scores) for s, ps in f.items() if len(ps) > 1}
    images = {s: ps[0] for s, ps in found.items() if s not in several}
    scores = {s: ps[0] for s, ps in found_scores.items() if s not in several}
    pairs = [(s, images[s], scores[s]) for s in sorted(images.keys() & scores.keys())]

    def ambiguous(f):
        return [f"{s} ({', '.join(p.name for p in ps)})" for s, ps in sorted(f.items())
                if len(ps) > 1]  # fmt: skip

    return (pairs, sorted(images.keys() - scores.keys() - several),
            sorted(scores.keys() - images.keys() - several), ambiguous(found),
            ambiguous(found_scores))  # fmt: skip


def report_unmatched(command: str, kind: str, stems: list[str], folder) -> None:
    """One stderr line naming the ``stems`` (at most 20) that lack a partner in ``folder``."""
    if stems:
        shown = ", ".join(stems[:20]) + (f", ... ({len(stems)} in all)" if len(stems) > 20 else "")
        print(f"{command}: {len(stems)} {kind} in {folder}: {shown}", file=sys.stderr)
