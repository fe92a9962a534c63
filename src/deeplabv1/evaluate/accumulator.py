"""The counts of one evaluation: a confusion matrix per method and its trimap bands.

Every count is an integer, so sums over images, and over processes (``arrays`` /
``set_arrays``), are exact whatever the order: a run split over ranks gives a single
process's numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deeplabv1.evaluate.metrics import ConfusionAccumulator, summarize
from deeplabv1.evaluate.trimap import TrimapAccumulator, void_distance


class EvalAccumulator:
    """Confusion matrices of every method (and their trimap bands), summed over images."""

    def __init__(self, methods: Sequence[str], num_classes: int, trimap_max_width: int | None):
        self.methods = list(methods)
        self.num_classes = num_classes
        self.trimap_max_width = trimap_max_width
        self.conf = {m: ConfusionAccumulator(num_classes) for m in self.methods}
        self.tri = (
            {m: TrimapAccumulator(num_classes, trimap_max_width) for m in self.methods}
            if trimap_max_width else {}
        )  # fmt: skip

    def add(self, preds: dict[str, np.ndarray], labels: np.ndarray) -> None:
        """Add one image's prediction per method against its labels."""
        dist = void_distance(labels) if self.tri else None
        for m in self.methods:
            self.conf[m].update(preds[m], labels)
            if self.tri:
                self.tri[m].update(preds[m], labels, dist)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every count, by name (for summing over processes)."""
        out = {f"confusion/{m}": a.matrix for m, a in self.conf.items()}
        out.update({f"trimap/{m}": a.counts for m, a in self.tri.items()})
        return out

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace the counts (by the names of ``arrays()``), e.g. with their sums."""
        for m in self.methods:
            self.conf[m].matrix = np.asarray(arrays[f"confusion/{m}"], dtype=np.int64)
            if self.tri:
                self.tri[m].counts = np.asarray(arrays[f"trimap/{m}"], dtype=np.int64)

    def results(self, class_names: Sequence[str]) -> dict:
        """``{"methods": {m: summarize(...)}}`` plus ``"trimap"`` with bands."""
        out: dict = {"methods": {m: summarize(a.matrix, list(class_names))
                                 for m, a in self.conf.items()}}  # fmt: skip
        if self.trimap_max_width:
            out["trimap"] = {"widths": self.tri[self.methods[0]].widths() if self.methods else []}
            for m in self.methods:
                out["trimap"][m] = self.tri[m].mean_iou_curve()
        return out
