"""The per-image work of ``deeplabv1 predict``: read, segment, CRF (batched), write.

``segment_files`` runs a list of (input, stem) through three stages:

1. read the image (and its ground truth for ``--side-by-side``), run the network
   (``Segmenter.network_scores``, on the segmenter's device);
2. with ``--crf``, the dense CRF through a ``CRFRunner`` (``Segmenter.crf_runner``): on a GPU,
   images of one size wait to go through one batched call, so they may finish out of order;
   on the CPU each image runs at once;
3. write the image's outputs together (``deeplabv1.io.atomic_paths``: all or none).

A failure at any stage is that image's alone: it is reported by name and the others go on. If
a batched CRF call fails, its images are redone one by one, so that only the image at fault is
reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from deeplabv1.errors import DeepLabError

if TYPE_CHECKING:
    from deeplabv1.predict.batch import PredictConfig


@dataclass
class ImageWork:
    """One image between its stages."""

    path: Path
    stem: str
    start: float
    rgb: np.ndarray
    scores: torch.Tensor  # (C, H, W) on the network's device
    net_labels: np.ndarray
    gt: np.ndarray | None = None
    note: str | None = None


def read_and_segment(seg, path: Path, stem: str, cfg: PredictConfig) -> ImageWork:
    """Stage 1: the image, its ground truth (``--side-by-side --gt``) and network scores."""
    from deeplabv1.data.palette import read_label_png
    from deeplabv1.predict.batch import find_ground_truth
    from deeplabv1.predict.images import load_image
    from deeplabv1.predict.segmenter import network_labels

    start = time.perf_counter()
    rgb = load_image(path, background=cfg.background, max_pixels=cfg.max_pixels())
    gt, note = None, None
    if cfg.side_by_side and cfg.gt:
        gt_path = find_ground_truth(Path(cfg.gt), path)
        if gt_path is None:
            note = f"no ground truth {path.stem}_label.png or {path.stem}.png in {cfg.gt}"
        else:
            gt = read_label_png(gt_path, num_classes=None)
            if gt.shape != rgb.shape[:2]:
                raise DeepLabError(f"{gt_path}: ground truth {gt.shape} != image {rgb.shape[:2]}")
    scores = seg.network_scores(rgb)
    return ImageWork(path, stem, start, rgb, scores, network_labels(scores), gt, note)


def write_outputs(
    seg, work: ImageWork, crf_labels: np.ndarray | None, cfg: PredictConfig, out_dir: Path
) -> dict:
    """Stage 3: write the image's files (all or none); returns its summary record."""
    from PIL import Image

    from deeplabv1.data.palette import colorize, label_to_pil
    from deeplabv1.io import atomic_paths
    from deeplabv1.predict.batch import output_names
    from deeplabv1.viz.figures import overlay, side_by_side

    rgb, gt = work.rgb, work.gt
    maps = {"net": work.net_labels}
    if cfg.crf:
        maps["crf"] = np.asarray(crf_labels).astype(np.uint8)
    cmap, names = seg.colormap, seg.class_names
    images = []  # (PIL image to write, in the order of output_names)
    for labels in maps.values():
        blended = overlay(rgb, labels, alpha=cfg.alpha, legend=cfg.legend, class_names=names,
                          colormap=cmap)  # fmt: skip
        images += [label_to_pil(labels, cmap), Image.fromarray(blended)]
    outputs = output_names(work.stem, cfg)
    with atomic_paths(*(out_dir / name for name in outputs)) as tmps:
        for image, tmp in zip(images, tmps):
            image.save(tmp, format="PNG")
        if cfg.side_by_side:
            panels = [("image", rgb), ("network", colorize(maps["net"], cmap))]
            if cfg.crf:
                panels.append(("network + CRF", colorize(maps["crf"], cmap)))
            classes = set().union(*(np.unique(m).tolist() for m in maps.values()))
            if gt is not None:
                panels.append(("ground truth", colorize(gt, cmap)))
                classes |= set(np.unique(gt).tolist())
            side_by_side(panels, tmps[-1], classes=classes, class_names=names,
                         colormap=cmap)  # fmt: skip
    record = {
        "input": str(work.path),
        "height": int(rgb.shape[0]),
        "width": int(rgb.shape[1]),
        "classes": {k: _class_names(v, names) for k, v in maps.items()},
        "outputs": outputs,
        "seconds": round(time.perf_counter() - work.start, 3),
    }
    if work.note:
        record["note"] = work.note
    return record


def _class_names(labels: np.ndarray, names) -> list[str]:
    from deeplabv1.viz.figures import class_name

    return [class_name(int(c), names) for c in np.unique(labels)]


def segment_files(
    seg,
    items: Sequence[tuple[Path, str]],
    cfg: PredictConfig,
    out_dir: Path,
    *,
    on_done: Callable[[dict], None],
    on_failed: Callable[[Path, Exception], None],
    progress: bool | None = None,
) -> None:
    """Segment every (input, stem) of ``items`` into ``out_dir`` (see the module doc).

    ``on_done(record)`` follows each image written, ``on_failed(path, exc)`` each failure.
    ``progress``: tqdm's ``disable`` inverted (None: a bar on a terminal only).
    """
    import sys

    from tqdm import tqdm

    bar = tqdm(total=len(items), desc="predict", unit="img", file=sys.stderr,
               disable=None if progress is None else not progress)  # fmt: skip
    runner = seg.crf_runner(cfg.crf_batch_size) if cfg.crf else None
    waiting: dict[int, ImageWork] = {}  # images in the CRF runner, by position

    def finish(work: ImageWork, crf_labels) -> None:
        try:
            on_done(write_outputs(seg, work, crf_labels, cfg, out_dir))
        except Exception as exc:  # report the file, keep going with the rest
            on_failed(work.path, exc)
        bar.update()

    def run_crf(position: int | None = None, work: ImageWork | None = None) -> None:
        """Submit one image (or flush the runner) and write what the CRF finished."""
        nonlocal runner
        try:
            if work is None:
                done = runner.flush()
            else:
                waiting[position] = work
                done = runner.submit(position, work.scores, work.rgb)
        except Exception as exc:
            # the batch at fault and the images still waiting: each alone, fresh runner
            runner = seg.crf_runner(cfg.crf_batch_size)
            lost = [waiting.pop(key) for key in sorted(waiting)]
            if len(lost) == 1:
                on_failed(lost[0].path, exc)
                bar.update()
                return
            for item in lost:
                try:
                    labels = seg.crf_probabilities(item.scores, item.rgb).argmax(0).cpu()
                except Exception as alone:
                    on_failed(item.path, alone)
                    bar.update()
                    continue
                finish(item, labels.numpy())
            return
        for key, labels in done:
            finish(waiting.pop(key), labels)

    for position, (path, stem) in enumerate(items):
        try:
            work = read_and_segment(seg, path, stem, cfg)
        except Exception as exc:
            on_failed(path, exc)
            bar.update()
            continue
        if runner is None:
            finish(work, None)
        else:
            run_crf(position, work)
    if runner is not None:
        run_crf()
    bar.close()
