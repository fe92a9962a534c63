"""Reading user images of any mode as RGB uint8, and expanding files / folders / globs.

The one image reader of ``deeplabv1 predict`` and ``deeplabv1 crf`` (and their Python
functions). It imports numpy and Pillow only: the CRF path stays free of torch.

Conversions (explicit, never a silent ``convert("RGB")`` of odd modes):

- EXIF orientation is applied first (``PIL.ImageOps.exif_transpose``), so phone photos are
  segmented upright and the outputs line up with what image viewers show.
- ``L`` / ``1`` (grayscale, bilevel): the gray value is copied to R, G and B.
- ``I;16*`` / ``I`` (16-bit grayscale PNG): scaled to 8 bits by ``round(v / 257)`` (0..65535 ->
  0..255), values outside 0..65535 clipped.
- ``RGBA`` / ``LA`` / ``PA`` / ``P`` with transparency: alpha-composited on a solid
  background, white by default (how viewers usually show transparent pictures), black on request.
  Transparent pixels otherwise keep arbitrary hidden colours that the network would see.
- ``P`` (palette), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: converted by Pillow.
- Anything else (e.g. floating-point TIFF, mode ``F``) is an error naming the file.

Size: images over ``max_pixels`` (default ``MAX_PIXELS``, 40 megapixels, e.g. 7746 x 5164) are
refused from their header, before any pixel is decoded, with a message giving the size and the
limit (``--max-megapixels`` raises it). Segmenting or CRF-filtering a 108-megapixel photo needs
tens of GB of memory; scale such images down first. Pillow's own decompression-bomb guard (a
header claiming more than about 179 megapixels) is reported the same way.
"""

from __future__ import annotations

import glob
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from deeplabv1.errors import DeepLabError
from deeplabv1.io import regular_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}
_PILLOW_RGB = ("RGB", "P", "CMYK", "YCbCr", "LAB", "HSV")
MAX_PIXELS = 40_000_000
_MODE_NAMES = {"F": "32-bit floating point: no defined 0-255 scale"}


def _pixels(n: int, fmt: str) -> str:
    """``n`` pixels in megapixels (format ``fmt``), or counted where that would round to 0."""
    return f"{n / 1e6:{fmt}} megapixels" if n >= 100_000 else f"{n:,} pixels"


def _too_large(path: Path, width: int, height: int, max_pixels: int) -> DeepLabError:
    return DeepLabError(
        f"{path}: image is {width} x {height} = {_pixels(width * height, '.1f')}, over the "
        f"limit of {_pixels(max_pixels, 'g')} (--max-megapixels); scale it down first"
    )


def to_rgb(img: Image.Image, background: str = "white", name: str = "image") -> np.ndarray:
    """Convert a PIL image of any supported mode to an (H, W, 3) uint8 RGB array."""
    if background not in BACKGROUNDS:
        raise DeepLabError(f"unknown background {background!r}: use one of {sorted(BACKGROUNDS)}")
    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, BACKGROUNDS[background] + (255,))
        return np.asarray(Image.alpha_composite(base, rgba).convert("RGB")).copy()
    if mode in ("L", "1"):
        gray = np.asarray(img.convert("L"))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I (32-bit int, how some 16-bit PNGs open)
        arr = np.asarray(img).astype(np.float64)
        gray = np.floor(np.clip(arr, 0, 65535) / 257.0 + 0.5).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in _PILLOW_RGB:
        return np.asarray(img.convert("RGB")).copy()
    what = _MODE_NAMES.get(mode, "not a colour or grey image")
    raise DeepLabError(f"{name}: unsupported image mode {mode!r} ({what}); convert it to 8-bit "
                       "RGB first")  # fmt: skip


@dataclass
class ImageSettings:
    """How ``predict`` and ``crf`` read images: settings both commands' configs inherit."""

    background: Literal["white", "black"] = field(
        default="white", metadata={"help": "white or black: what transparent pixels become"}
    )
    max_megapixels: float = field(
        default=MAX_PIXELS / 1e6, metadata={"help": "refuse larger images (megapixels)"}
    )

    def max_pixels(self) -> int:
        """The size limit in pixels (DeepLabError unless it is positive)."""
        if not self.max_megapixels > 0:
            raise DeepLabError(f"max_megapixels (--max-megapixels) must be > 0, got "
                               f"{self.max_megapixels}")  # fmt: skip
        return int(self.max_megapixels * 1e6)


def load_image(
    path: str | os.PathLike, background: str = "white", max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3), EXIF orientation applied (see module doc).

    Unreadable, truncated, non-image or oversized files raise ``DeepLabError`` naming the file.
    """
    path = Path(path)
    regular_file(path, "image file")  # a FIFO would be waited on forever
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit
            with Image.open(path) as img:
                if img.width * img.height > max_pixels:
                    raise _too_large(path, img.width, img.height, max_pixels)
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb(img, background=background, name=str(path))
    except FileNotFoundError as exc:
        raise DeepLabError(f"{path}: image file not found") from exc
    except DeepLabError:
        raise
    except Image.DecompressionBombError as exc:
        raise DeepLabError(f"{path}: refused as a decompression bomb ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for bad or truncated files
        raise DeepLabError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    except MemoryError as exc:
        raise DeepLabError(f"{path}: not enough memory to decode the image") from exc


def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Expand files, folders (their image files, not recursive) and glob patterns.

    Returns ``(paths, problems)``: the image paths in order without duplicates, and one message
    per input that matched nothing. Files given by name are kept whatever their suffix (reading
    them reports a problem if they are not images); folders and globs keep image suffixes only.
    """
    paths: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            found = [p]
        elif p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append(f"{item}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        elif glob.has_magic(item):
            found = [
                Path(q)
                for q in sorted(glob.glob(item, recursive=True))
                if Path(q).is_file() and Path(q).suffix.lower() in IMAGE_SUFFIXES
            ]
            if not found:
                problems.append(f"{item}: pattern matches no image files")
        else:
            found = []
            problems.append(f"{item}: no such file or folder")
        paths += [q for q in found if q not in paths]
    return paths, problems
