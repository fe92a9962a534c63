"""Segmentation pictures: a label map blended over its image, and the paper-style panel strip.

Colours are the VOCdevkit colour map (``deeplabv1.data.palette``) unless a ``colormap`` (256 x 3,
e.g. ``Segmenter.colormap`` from a checkpoint's palette) is given, so an overlay, a palette PNG
and a ground-truth file all show a class in the same colour.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from deeplabv1.data.palette import IGNORE_INDEX, VOC_CLASSES, colorize
from deeplabv1.errors import DeepLabError


def class_name(index: int, class_names: Sequence[str] = VOC_CLASSES) -> str:
    """Display name of a class index (255 is ``void``; unnamed indices print as numbers)."""
    if index == IGNORE_INDEX:
        return "void"
    return class_names[index] if 0 <= index < len(class_names) else str(index)


def _as_rgb(rgb) -> np.ndarray:
    if isinstance(rgb, Image.Image):
        rgb = rgb.convert("RGB")
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise DeepLabError(f"expected an RGB uint8 image (H, W, 3), got {arr.dtype} {arr.shape}")
    return arr


def overlay(
    rgb,
    labels: np.ndarray,
    alpha: float = 0.5,
    legend: bool = True,
    *,
    class_names: Sequence[str] = VOC_CLASSES,
    colormap: np.ndarray | None = None,
) -> np.ndarray:
    """Blend the colours of ``labels`` over ``rgb``: ``(1 - alpha) * rgb + alpha * colour``.

    Every pixel is blended, background (black) and void (255, cream) included, rounded half up
    to an integer. With ``legend`` a box in the top-left corner lists the classes present
    (colour swatch and name), in class order. Returns a new (H, W, 3) uint8 array.
    """
    img = _as_rgb(rgb)
    labels = np.asarray(labels)
    if labels.shape != img.shape[:2]:
        raise DeepLabError(f"label map {labels.shape} does not match image {img.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise DeepLabError(f"overlay opacity must lie in 0..1, got {alpha}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise DeepLabError("label values must lie in 0..255")
    colours = colorize(labels, colormap).astype(np.float64)
    out = np.floor((1.0 - alpha) * img.astype(np.float64) + alpha * colours + 0.5)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if legend and labels.size:
        out = draw_legend(out, np.unique(labels).tolist(), class_names=class_names,
                          colormap=colormap)  # fmt: skip
    return out


def draw_legend(
    rgb: np.ndarray,
    classes: Iterable[int],
    *,
    class_names: Sequence[str] = VOC_CLASSES,
    colormap: np.ndarray | None = None,
) -> np.ndarray:
    """Draw a legend box (swatch + name per class) in the top-left corner; returns a copy."""
    classes = list(classes)
    img = Image.fromarray(_as_rgb(rgb))
    h, w = img.height, img.width
    size = int(np.clip(min(h, w) / 28, 9, 18))
    font = ImageFont.load_default(size=size)
    pad, gap = max(2, size // 4), max(2, size // 3)
    names = [class_name(c, class_names) for c in classes]
    text_w = max(int(font.getlength(n)) for n in names)
    box_w = pad * 3 + size + text_w
    box_h = pad * 2 + len(names) * size + (len(names) - 1) * gap
    draw = ImageDraw.Draw(img, "RGBA")
    draw.rectangle([0, 0, box_w, box_h], fill=(255, 255, 255, 200))
    for k, (c, name) in enumerate(zip(classes, names)):
        y = pad + k * (size + gap)
        colour = tuple(int(v) for v in colorize(np.uint8(c), colormap))
        draw.rectangle([pad, y, pad + size - 1, y + size - 1], fill=colour, outline=(0, 0, 0))
        draw.text((pad * 2 + size, y + size / 2), name, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(img).copy()


def side_by_side(
    panels: Sequence,
    path: str | os.PathLike,
    *,
    classes: Iterable[int] | None = None,
    class_names: Sequence[str] = VOC_CLASSES,
    colormap: np.ndarray | None = None,
    panel_width: float = 2.4,
    caption: str | None = None,
    dpi: int = 100,
) -> Path:
    """Write a strip of titled panels (image | network | network + CRF | ground truth) as PNG.

    ``panels`` is one row ``[(title, rgb), ...]`` or a list of such rows (one row per image;
    titles of later rows are drawn only where they differ from the first row's). ``classes``
    adds a colour legend under the strip; ``caption`` text under that (may hold newlines).
    """
    from deeplabv1.viz.plots import _figure, save_figure

    rows = [panels] if panels and isinstance(panels[0], tuple) else list(panels)
    if not rows or not all(rows):
        raise DeepLabError(f"{path}: no panels to draw")
    n_cols = max(len(r) for r in rows)
    classes = [] if classes is None else sorted({int(c) for c in classes})
    # layout in inches, top to bottom: per row a title band then the panels; legend; caption
    gap, legend_h = 0.06, 0.4 if classes else 0.0
    caption_h = 0.1 + 0.16 * (caption.count("\n") + 1) if caption else 0.0
    first_titles = [t for t, _ in rows[0]]
    show_title = [
        [i == 0 or j >= len(first_titles) or t != first_titles[j] for j, (t, _) in enumerate(r)]
        for i, r in enumerate(rows)
    ]
    band_h = [0.28 if any(flags) else gap * 2 for flags in show_title]  # title band or a gap
    row_h = [
        panel_width * max(_as_rgb(im).shape[0] / _as_rgb(im).shape[1] for _, im in r) for r in rows
    ]
    width = panel_width * n_cols + gap * (n_cols - 1)
    height = sum(row_h) + sum(band_h) + legend_h + caption_h
    fig = _figure(width, height)
    top = height
    for i, row in enumerate(rows):
        top -= band_h[i] + row_h[i]
        for j, (title, img) in enumerate(row):
            left = j * (panel_width + gap)
            ax = fig.add_axes((left / width, top / height, panel_width / width, row_h[i] / height))
            ax.imshow(_as_rgb(img), interpolation="nearest")
            ax.set_axis_off()
            if show_title[i][j]:
                ax.set_title(title, fontsize=10, pad=4)
    if classes:
        from matplotlib.patches import Patch

        handles = [
            Patch(
                facecolor=colorize(np.uint8(c), colormap) / 255.0,
                edgecolor="black",
                label=class_name(c, class_names),
            )
            for c in classes
        ]
        fig.legend(
            handles=handles,
            loc="center",
            ncol=min(len(handles), 7),
            fontsize=8,
            frameon=False,
            bbox_to_anchor=(0.5, (caption_h + legend_h / 2) / height),
        )
    if caption:
        fig.text(0.5, caption_h / 2 / height, caption, ha="center", va="center", fontsize=8)
    return save_figure(fig, path, dpi=dpi)
