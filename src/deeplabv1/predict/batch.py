"""``deeplabv1 predict``: segment many images, writing label maps, overlays and figures.

Outputs per input image ``<stem>`` in the output folder (``<stem>-2`` etc. when two inputs share
a stem):

- ``<stem>_net.png``: network labels, palette PNG (pixel value = class index; the colours are
  the checkpoint's palette, VOC's by default)
- ``<stem>_net_overlay.png``: those labels blended over the image, with a legend of the
  checkpoint's class names
- with ``--crf``: ``<stem>_crf.png`` and ``<stem>_crf_overlay.png`` (network + CRF)
- with ``--side-by-side``: ``<stem>_figure.png`` (image | network | network + CRF | truth)

plus ``predict_config.yaml`` (the resolved settings) and ``predict_summary.json`` (per image:
input, size, classes found, outputs, seconds; and the failures). A file that cannot be read or
segmented is reported by name and skipped; the run goes on and returns exit status 1.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from deeplabv1.errors import DeepLabError


@dataclass
class PredictConfig:
    """Settings of ``deeplabv1 predict`` (flags, or keys of a ``--config`` YAML file)."""

    inputs: list[str] = field(default_factory=list)
    weights: str = ""
    output: str = ""
    crf: bool = False
    crf_params: str | None = field(
        default=None, metadata={"help": "CRF variant (default: the checkpoint's, else its arch's)"}
    )
    crf_iters: int = field(default=10, metadata={"help": "mean-field iterations"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda or cuda:N"})
    alpha: float = field(default=0.5, metadata={"help": "overlay opacity of the label colours"})
    legend: bool = field(default=True, metadata={"help": "draw a class legend on overlays"})
    side_by_side: bool = False
    gt: str | None = None
    test_size: int = field(
        default=513, metadata={"help": "pad images to this square (0: to the next 8k+1 only)"}
    )
    background: Literal["white", "black"] = field(
        default="white", metadata={"help": "white or black: what transparent pixels become"}
    )


def find_ground_truth(gt_dir: Path, image: Path) -> Path | None:
    """``<gt_dir>/<stem>_label.png``, else ``<stem>.png`` (VOC SegmentationClass), if present.

    The image file itself never counts (``--gt`` may be the folder holding the images).
    """
    for name in (f"{image.stem}_label.png", f"{image.stem}.png"):
        candidate = gt_dir / name
        if candidate.is_file() and candidate.resolve() != image.resolve():
            return candidate
    return None


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, n = path.stem, 2
    while stem in used:
        stem, n = f"{path.stem}-{n}", n + 1
    used.add(stem)
    return stem


def segment_one(seg, path: Path, stem: str, cfg: PredictConfig, out_dir: Path) -> dict:
    """Segment one file and write its outputs; returns its summary record."""
    from PIL import Image

    from deeplabv1.data.palette import colorize, read_label_png, save_label_png
    from deeplabv1.io import atomic_path
    from deeplabv1.predict.images import load_image
    from deeplabv1.viz.figures import overlay, side_by_side

    start = time.perf_counter()
    rgb = load_image(path, background=cfg.background)
    gt, note = None, None
    if cfg.side_by_side and cfg.gt:
        gt_path = find_ground_truth(Path(cfg.gt), path)
        if gt_path is None:
            note = f"no ground truth {path.stem}_label.png or {path.stem}.png in {cfg.gt}"
        else:
            gt = read_label_png(gt_path, num_classes=None)
            if gt.shape != rgb.shape[:2]:
                raise DeepLabError(f"{gt_path}: ground truth {gt.shape} != image {rgb.shape[:2]}")
    result = seg.predict(rgb, crf=cfg.crf)
    maps = {"net": result.net_labels}
    if cfg.crf:
        maps["crf"] = result.crf_labels
    outputs = []
    cmap, names = seg.colormap, seg.class_names
    for kind, labels in maps.items():
        save_label_png(out_dir / f"{stem}_{kind}.png", labels, cmap)
        blended = overlay(rgb, labels, alpha=cfg.alpha, legend=cfg.legend, class_names=names,
                          colormap=cmap)  # fmt: skip
        with atomic_path(out_dir / f"{stem}_{kind}_overlay.png") as tmp:
            Image.fromarray(blended).save(tmp, format="PNG")
        outputs += [f"{stem}_{kind}.png", f"{stem}_{kind}_overlay.png"]
    if cfg.side_by_side:
        panels = [("image", rgb), ("network", colorize(maps["net"], cmap))]
        if cfg.crf:
            panels.append(("network + CRF", colorize(maps["crf"], cmap)))
        classes = set().union(*(np.unique(m).tolist() for m in maps.values()))
        if gt is not None:
            panels.append(("ground truth", colorize(gt, cmap)))
            classes |= set(np.unique(gt).tolist())
        side_by_side(panels, out_dir / f"{stem}_figure.png", classes=classes, class_names=names,
                     colormap=cmap)  # fmt: skip
        outputs.append(f"{stem}_figure.png")
    record = {
        "input": str(path),
        "height": int(rgb.shape[0]),
        "width": int(rgb.shape[1]),
        "classes": {k: _class_names(v, names) for k, v in maps.items()},
        "outputs": outputs,
        "seconds": round(time.perf_counter() - start, 3),
    }
    if note:
        record["note"] = note
    return record


def _class_names(labels: np.ndarray, names) -> list[str]:
    from deeplabv1.viz.figures import class_name

    return [class_name(int(c), names) for c in np.unique(labels)]


def run_predict(cfg: PredictConfig) -> int:
    """Run ``deeplabv1 predict``; returns 0, or 1 when any input failed (see module doc)."""
    from tqdm import tqdm

    from deeplabv1.config import config_to_dict, save_config
    from deeplabv1.io import atomic_write_json
    from deeplabv1.predict.images import BACKGROUNDS, collect_inputs
    from deeplabv1.predict.segmenter import Segmenter

    if not cfg.weights:
        raise DeepLabError("--weights: a checkpoint file is required")
    if not cfg.output:
        raise DeepLabError("-o/--output: an output folder is required")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise DeepLabError(f"--alpha: must lie in 0..1, got {cfg.alpha}")
    if cfg.background not in BACKGROUNDS:
        raise DeepLabError(
            f"--background: use one of {sorted(BACKGROUNDS)}, not {cfg.background!r}"
        )
    if cfg.gt and not Path(cfg.gt).is_dir():
        raise DeepLabError(f"{cfg.gt}: ground-truth folder not found")
    paths, problems = collect_inputs(list(cfg.inputs))
    for msg in problems:
        print(f"deeplabv1 predict: {msg}", file=sys.stderr)
    seg = Segmenter.from_checkpoint(
        cfg.weights, device=cfg.device, test_size=cfg.test_size or None,
        crf_params=cfg.crf_params, crf_iters=cfg.crf_iters,
    )  # fmt: skip
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "predict_config.yaml")
    done, failed, used = [], [], set()
    for path in tqdm(paths, desc="predict", unit="img", file=sys.stderr, disable=None):
        try:
            done.append(segment_one(seg, path, _unique_stem(path, used), cfg, out_dir))
            if "note" in done[-1]:
                tqdm.write(f"deeplabv1 predict: {path}: {done[-1]['note']}", file=sys.stderr)
        except Exception as exc:  # report the file, keep going with the rest
            msg = str(exc) if isinstance(exc, DeepLabError) else f"{type(exc).__name__}: {exc}"
            msg = msg if str(path) in msg else f"{path}: {msg}"
            tqdm.write(f"deeplabv1 predict: skipped {msg}", file=sys.stderr)
            failed.append({"input": str(path), "error": msg})
    summary = {"config": config_to_dict(cfg), "images": done, "failed": failed,
               "unmatched": problems}  # fmt: skip
    atomic_write_json(out_dir / "predict_summary.json", summary)
    print(f"deeplabv1 predict: {len(done)} image(s) segmented into {out_dir}, "
          f"{len(failed)} failed, {len(problems)} input(s) matched nothing")  # fmt: skip
    return 1 if failed or problems or not paths else 0
