"""Plots that explain a run: trimap curves (paper Fig. 5), per-class IoU bars, training curves.

Every function draws on a fresh ``matplotlib.figure.Figure`` (the Agg canvas, no pyplot global
state, no display needed) and writes a PNG atomically: a crash never leaves a half-written file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from deeplabv1.errors import DeepLabError
from deeplabv1.io import atomic_path

DPI = 100


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Write a matplotlib figure to ``path`` as PNG, atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return path


def plot_trimap(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    *,
    title: str = "Mean IoU in a band around object boundaries",
) -> Path:
    """Mean IoU (%) versus trimap width (pixels), one line per method, like P Fig. 5.

    ``curves`` maps a method name to ``(widths, miou_percent)`` of equal length.
    """
    if not curves:
        raise DeepLabError(f"{path}: no trimap curves to plot")
    fig = _figure(6.0, 4.2)
    ax = fig.add_subplot()
    markers = "osd^v<>px*h"
    for i, (name, (widths, miou)) in enumerate(curves.items()):
        widths, miou = np.asarray(widths, float), np.asarray(miou, float)
        if widths.shape != miou.shape or widths.ndim != 1:
            raise DeepLabError(
                f"{path}: trimap curve {name!r} has widths {widths.shape} and mIoU {miou.shape}"
            )
        every = max(1, len(widths) // 8)
        ax.plot(widths, miou, marker=markers[i % len(markers)], markevery=every, label=name)
    ax.set_xlabel("trimap width (pixels)")
    ax.set_ylabel("mean IoU (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def plot_class_iou(
    per_class: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike,
    *,
    title: str = "IoU per class",
) -> Path:
    """Grouped bars: one group per class, one bar per method (``{method: {class: iou_%}}``).

    Classes are listed in the order they first appear; a class a method lacks gets no bar.
    The legend shows each method's mean over its classes.
    """
    if not per_class:
        raise DeepLabError(f"{path}: no per-class IoU to plot")
    classes: list[str] = []
    for scores in per_class.values():
        classes += [c for c in scores if c not in classes]
    n_methods = len(per_class)
    fig = _figure(max(6.0, 0.42 * len(classes) * max(1, n_methods) ** 0.5 + 1.5), 4.2)
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    bar = 0.8 / n_methods
    for i, (name, scores) in enumerate(per_class.items()):
        vals = np.array([scores.get(c, math.nan) for c in classes], dtype=float)
        mean = np.nanmean(vals) if np.isfinite(vals).any() else math.nan
        ax.bar(x - 0.4 + bar * (i + 0.5), vals, bar, label=f"{name} (mean {mean:.2f})")
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=60, ha="right")
    ax.set_xlim(-0.6, len(classes) - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU (%)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=min(n_methods, 3))
    return save_figure(fig, path)


def plot_training_log(
    records: Sequence[Mapping], path: str | os.PathLike, *, title: str = "Training"
) -> Path:
    """Loss and learning rate versus iteration from JSONL training records.

    Records need ``iter`` and at least one of ``loss`` / ``lr``; others (e.g. evaluation
    lines) are ignored. The learning rate is drawn on a log axis (the step policy).
    """
    pts = [r for r in records if "iter" in r and ("loss" in r or "lr" in r)]
    if not pts:
        raise DeepLabError(f"{path}: no records with 'iter' and 'loss' or 'lr' to plot")
    fig = _figure(6.5, 5.0)
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    loss = [(r["iter"], r["loss"]) for r in pts if r.get("loss") is not None]
    if loss:
        it, val = np.asarray(loss, dtype=float).T
        ax_loss.plot(it, val, lw=0.8, alpha=0.5, label="loss")
        if len(val) >= 10:
            k = max(2, len(val) // 20)
            smooth = np.convolve(val, np.ones(k) / k, mode="valid")
            ax_loss.plot(it[k - 1 :], smooth, lw=1.6, label=f"loss (mean of {k})")
        ax_loss.legend(loc="upper right")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(title)
    ax_loss.grid(True, alpha=0.3)
    lr = [(r["iter"], r["lr"]) for r in pts if r.get("lr") is not None]
    if lr:
        it, val = np.asarray(lr, dtype=float).T
        ax_lr.plot(it, val, drawstyle="steps-post", color="tab:red")
        if (val > 0).all():
            ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iteration")
    ax_lr.grid(True, alpha=0.3)
    return save_figure(fig, path)


def plot_receptive_field(*args, **kwargs):
    """Receptive-field growth per layer: see ``deeplabv1.viz.receptive_field``."""
    from deeplabv1.viz import receptive_field

    return receptive_field.plot_receptive_field(*args, **kwargs)
