"""The receptive-field figure of ``deeplabv1 rf --plot OUT.png``.

Left: the true receptive field after every conv / pool layer, one line per variant (walked from the
built modules by :mod:`deeplabv1.models.receptive_field`). Right: the true field against the
paper's nominal figure per variant, with the halo of the conv stack under fc6 as the difference.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from deeplabv1.errors import DeepLabError
from deeplabv1.io import atomic_path

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")


def _row(row) -> tuple[str, int]:
    if isinstance(row, Mapping):
        return str(row["name"]), int(row["rf"])
    return str(row.name), int(row.rf)


def _axis_names(tables: Mapping[str, Sequence]) -> list[str]:
    """Union of the layer names in forward order (LargeFOV's pool5a slots in before fc6)."""
    names: list[str] = []
    for rows in tables.values():
        previous = -1
        for row in rows:
            name = _row(row)[0]
            if name in names:
                previous = names.index(name)
            else:
                previous += 1
                names.insert(previous, name)
    return names


def plot_receptive_field(
    tables: Mapping[str, Sequence],
    path: str | os.PathLike,
    *,
    paper: Mapping[str, int] | None = None,
    title: str = "Receptive field of one DeepLab V1 score, layer by layer",
) -> Path:
    """Plot RF growth per variant (``tables``: arch -> rows with ``name`` and ``rf``) to a PNG.

    ``paper`` (arch -> the paper's nominal figure) adds the true-vs-nominal bar panel.
    Written atomically; returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not tables:
        raise DeepLabError(f"{path}: no receptive-field tables to plot")
    names = _axis_names(tables)
    fig = Figure(figsize=(13.0, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1, 2 if paper else 1, width_ratios=[2.3, 1] if paper else [1])
    ax = fig.add_subplot(grid[0, 0])
    curves: dict[tuple, list[str]] = {}  # identical curves share one line and one label
    for arch, rows in tables.items():
        curves.setdefault(tuple(_row(r) for r in rows), []).append(arch)
    for i, (points, archs) in enumerate(curves.items()):
        xs = [names.index(n) for n, _ in points]
        ys = [rf for _, rf in points]
        ax.plot(xs, ys, marker="o", ms=3, lw=1.6, color=COLORS[i % len(COLORS)],
                label=f"{' = '.join(archs)}: {ys[-1]} px")  # fmt: skip
    for i, name in enumerate(names):
        if name.startswith("pool"):
            ax.axvline(i, color="0.85", lw=0.8, zorder=0)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=70, fontsize=7)
    ax.set_ylabel("receptive field (px)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    if paper:
        bx = fig.add_subplot(grid[0, 1])
        archs = [a for a in tables if a in paper]
        true = [_row(tables[a][-1])[1] for a in archs]
        nominal = [int(paper[a]) for a in archs]
        ys = range(len(archs))
        bx.barh(ys, true, color="#9ecae1", label="true (layer recursion)")
        bx.barh(ys, nominal, color="#3182bd", label="paper: (k-1)*d*8 + 32")
        for y, t, n in zip(ys, true, nominal):
            bx.text(t + 4, y, f"{t}  (+{t - n} halo)", va="center", fontsize=8)
            bx.text(n / 2, y, str(n), va="center", ha="center", fontsize=8, color="white")
        bx.set_yticks(list(ys))
        bx.set_yticklabels(archs, fontsize=8)
        bx.invert_yaxis()
        bx.set_xlim(0, max(true) * 1.45)
        bx.set_xlabel("px")
        bx.set_title("true vs the paper's nominal field", fontsize=10)
        bx.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, facecolor="white")
    return path
