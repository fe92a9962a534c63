"""A small synthetic segmentation dataset in the VOC2012 layout (or a plain images/ + masks/
folder), for demos and tests.

Each image holds 1-3 textured objects on a textured, low-saturation background. Every object
class has its own shape family (ellipses, polygons, irregular blobs) and hue, with per-instance
colour noise and a class-specific texture, so a small network can learn the classes from colour
and texture while its stride-8 output blurs the (irregular) boundaries: the colour edges are
there for the bilateral CRF to snap to. As in VOC, a void (255) band a few pixels wide surrounds
every object. Image ``i`` depends only on ``(seed, i)``: the same seed gives the same files.
"""

from __future__ import annotations

import colorsys
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from deeplabv1.data.palette import IGNORE_INDEX, VOC_CLASSES, save_label_png
from deeplabv1.data.voc import SEGMENTATION_LISTS, write_ids
from deeplabv1.errors import DeepLabError
from deeplabv1.io import atomic_path, atomic_write_text, is_ours

SHAPES = ("ellipse", "polygon", "blob")


def class_style(cls: int, num_classes: int) -> tuple[str, float, int]:
    """(shape family, hue in [0, 1), texture kind 0=stripes 1=speckle) of object class ``cls``."""
    k = cls - 1
    return SHAPES[k % len(SHAPES)], k / (num_classes - 1), k % 2


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth random field in [0, 1] (a bicubically upsampled coarse grid)."""
    gh, gw = max(2, cells * h // max(h, w)), max(2, cells * w // max(h, w))
    grid = Image.fromarray((rng.random((gh, gw)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0


def _shape_mask(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Boolean mask of one object of shape family ``kind``, placed at random.

    Polygons may be star-shaped (sharp concave corners), blobs wobble with up to 9 harmonics,
    and some objects get limbs 6-9 px wide: detail finer than the stride-8 score grid.
    """
    r0 = rng.uniform(0.12, 0.28) * min(h, w)
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    if kind == "ellipse":
        theta = rng.uniform(0, np.pi)
        a, b = r0 * rng.uniform(1.0, 1.5), r0 * rng.uniform(0.45, 0.9)
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        mask = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    elif kind == "polygon":
        n = int(rng.integers(3, 9))
        step = 2 * np.pi / n
        angles = rng.uniform(0, step) + np.arange(n) * step + rng.uniform(-0.3, 0.3, n) * step
        radii = r0 * rng.uniform(0.75, 1.25, n)
        if n >= 6 and rng.random() < 0.5:  # a star: every other vertex pulled inwards
            radii[1::2] *= rng.uniform(0.35, 0.6)
        draw.polygon([(cx + r * np.cos(t), cy + r * np.sin(t)) for r, t in zip(radii, angles)],
                     fill=1)
        mask = np.asarray(img, dtype=bool)
    else:  # blob: a radius that wobbles with the angle gives an irregular boundary
        angle = np.arctan2(dy, dx)
        radius = np.ones_like(angle)
        for k in range(2, 10):
            radius += rng.uniform(0, 0.6 / k) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
        mask = np.hypot(dx, dy) <= r0 * np.clip(radius, 0.4, None)
    if rng.random() < 0.4:
        img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            t, length = rng.uniform(0, 2 * np.pi), r0 * rng.uniform(1.3, 1.9)
            end = (cx + length * np.cos(t), cy + length * np.sin(t))
            draw.line([(cx, cy), end], fill=1, width=int(rng.integers(6, 10)))
        mask |= np.asarray(img, dtype=bool)
    return mask


def _texture(kind: int, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Brightness multiplier field around 1 for an object's texture."""
    if kind == 0:  # stripes of random orientation and period
        theta, period = rng.uniform(0, np.pi), rng.uniform(4.0, 9.0)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = (xx * np.cos(theta) + yy * np.sin(theta)) * (2 * np.pi / period)
        return 1.0 + 0.18 * np.sin(phase)
    return 1.0 + 0.25 * (_smooth_field(rng, h, w, max(h, w) // 3) - 0.5)


def synth_sample(
    rng: np.random.Generator, size: tuple[int, int], num_classes: int = 6, void_width: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic (RGB uint8 (H, W, 3), labels uint8 (H, W) with a 255 band) pair."""
    w, h = size
    # background: low-saturation colour, smooth shading and a second coarse texture
    hue, sat = rng.random(), rng.uniform(0.0, 0.25)
    base = np.array(colorsys.hsv_to_rgb(hue, sat, rng.uniform(0.35, 0.75)), np.float32)
    shade = 0.7 + 0.6 * _smooth_field(rng, h, w, 4)
    shade *= 0.85 + 0.3 * _smooth_field(rng, h, w, max(h, w) // 6)
    rgb = base[None, None, :] * shade[..., None]
    labels = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(1, num_classes))
        kind, hue, tex = class_style(cls, num_classes)
        mask = _shape_mask(kind, rng, h, w)
        colour = colorsys.hsv_to_rgb(
            (hue + rng.normal(0, 0.025)) % 1.0, rng.uniform(0.55, 0.95), rng.uniform(0.55, 0.95)
        )
        shading = _texture(tex, rng, h, w) * (0.85 + 0.3 * _smooth_field(rng, h, w, 3))
        rgb[mask] = np.asarray(colour, np.float32)[None, :] * shading[mask][:, None]
        labels[mask] = cls
    rgb = rgb * 255.0 + rng.normal(0, 6.0, rgb.shape)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    img = img.filter(ImageFilter.GaussianBlur(0.6))  # soft, camera-like edges
    if void_width > 0:
        # VOC-style void band: every pixel within void_width/2 of a label change
        k = 2 * (void_width // 2) + 1
        edge = ndimage.maximum_filter(labels, k) != ndimage.minimum_filter(labels, k)
        labels[edge] = IGNORE_INDEX
    return np.asarray(img), labels


def make_synthetic_voc(
    out_dir: str | os.PathLike,
    num_images: int,
    *,
    size: tuple[int, int] = (160, 120),
    seed: int = 0,
    num_classes: int = 6,
    val_fraction: float = 0.25,
    void_width: int = 4,
) -> Path:
    """Write ``num_images`` synthetic pairs in the VOC2012 layout under ``out_dir``; return it.

    Layout: JPEGImages/<id>.jpg, SegmentationClass/<id>.png (VOC palette PNGs, class indices
    1..num_classes-1 for objects, 0 background, 255 void band), ImageSets/Segmentation/
    {train,val,trainval}.txt (the last ``round(num_images * val_fraction)`` ids are val),
    classes.txt (the names: VOC's first ``num_classes``, as the class indices are VOC's).
    ``size`` is (width, height).
    """
    if num_images < 1:
        raise DeepLabError(f"number of images must be at least 1, got {num_images}")
    if not 2 <= num_classes <= len(VOC_CLASSES):
        raise DeepLabError(f"num_classes must lie in 2..{len(VOC_CLASSES)}, got {num_classes}")
    w, h = int(size[0]), int(size[1])
    if w < 16 or h < 16:
        raise DeepLabError(f"image size must be at least 16x16, got {w}x{h}")
    if not 0.0 <= val_fraction < 1.0:
        raise DeepLabError(f"val fraction must lie in [0, 1), got {val_fraction}")
    root = Path(out_dir)
    ids = [f"synth_{i:05d}" for i in range(num_images)]
    for i, sid in enumerate(ids):
        rgb, labels = synth_sample(np.random.default_rng([seed, i]), (w, h), num_classes,
                                   void_width)
        with atomic_path(root / "JPEGImages" / f"{sid}.jpg") as tmp:
            Image.fromarray(rgb).save(tmp, format="JPEG", quality=92)
        save_label_png(root / "SegmentationClass" / f"{sid}.png", labels)
    n_val = int(round(num_images * val_fraction))
    if num_images > 1:
        n_val = min(max(n_val, 1 if val_fraction > 0 else 0), num_images - 1)
    train, val = ids[: num_images - n_val], ids[num_images - n_val :]
    lists = root / SEGMENTATION_LISTS
    write_ids(lists / "train.txt", train)
    write_ids(lists / "val.txt", val)
    write_ids(lists / "trainval.txt", ids)
    atomic_write_text(root / "classes.txt", "".join(f"{n}\n" for n in VOC_CLASSES[:num_classes]))
    return root


def remove_stale_samples(root: str | os.PathLike,
                         num_images: int) -> tuple[list[Path], list[Path]]:
    """Delete the images and labels an earlier ``make_synthetic_voc`` wrote under ``root`` with
    ids from ``num_images`` on (a rewrite with fewer images would otherwise leave them beside
    the new ones): files named as it names them that deeplabv1 wrote and that are unchanged
    since. Returns (the deleted paths, those kept: changed since, or not deeplabv1's)."""
    root = Path(root)
    gone, kept = [], []
    for folder, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        for path in sorted((root / folder).glob(f"synth_*{suffix}")):
            index = path.stem[len("synth_"):]
            if len(index) == 5 and index.isdigit() and int(index) >= num_images:
                if is_ours(path):
                    path.unlink()
                    gone.append(path)
                else:
                    kept.append(path)
    return gone, kept


def make_synthetic_folder(
    out_dir: str | os.PathLike,
    num_images: int,
    *,
    size: tuple[int, int] = (160, 120),
    seed: int = 0,
    classes: list | None = None,
    void_width: int = 4,
) -> Path:
    """Write ``num_images`` synthetic pairs as a plain dataset folder under ``out_dir``.

    Layout (``deeplabv1.data.folder``): images/<id>.png, masks/<id>.png (palette PNGs of class
    indices, 255 void band) and, when ``classes`` is given (entries as in a ``classes.yaml``:
    names or ``{name, color}`` mappings; 2..21 of them), classes.yaml; without it 6 classes.
    No split lists: use ``--val-fraction`` or ``--split all``. Image ``i`` is image ``i`` of
    ``make_synthetic_voc`` with the same seed and number of classes (saved losslessly).
    """
    import yaml

    num_classes = 6 if classes is None else len(classes)
    if not 2 <= num_classes <= len(VOC_CLASSES):
        raise DeepLabError(f"classes: 2..{len(VOC_CLASSES)} are supported, got {num_classes}")
    root = Path(out_dir)
    for i in range(num_images):
        rgb, labels = synth_sample(np.random.default_rng([seed, i]), (int(size[0]), int(size[1])),
                                   num_classes, void_width)  # fmt: skip
        with atomic_path(root / "images" / f"synth_{i:05d}.png") as tmp:
            Image.fromarray(rgb).save(tmp, format="PNG")
        save_label_png(root / "masks" / f"synth_{i:05d}.png", labels)
    if classes is not None:
        atomic_write_text(root / "classes.yaml", yaml.safe_dump(list(classes), sort_keys=False))
    return root
