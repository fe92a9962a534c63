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
segmented is reported by name and skipped; the run goes on and returns exit status 1. An image's
outputs are written together (``deeplabv1.io.atomic_paths``): a failed image leaves none of
them. The output folder is a ``deeplabv1.rundir.run_directory`` (one run at a time, never an
input folder), and every output is checked before the first image: never an input, never a
file deeplabv1 did not write unless ``overwrite``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deeplabv1.errors import DeepLabError
from deeplabv1.predict.images import ImageSettings


@dataclass
class PredictConfig(ImageSettings):
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
    overwrite: bool = field(
        default=False, metadata={"help": "replace existing outputs deeplabv1 did not write"}
    )

    def validate(self) -> None:
        """Reject missing or impossible settings, naming the setting."""
        from deeplabv1.config import check_types

        check_types(self, "predict")
        checks = [
            (bool(self.weights), "weights (--weights): a checkpoint file is required"),
            (bool(self.output), "output (-o/--output): an output folder is required"),
            (0.0 <= self.alpha <= 1.0, f"alpha (--alpha) must lie in 0..1, got {self.alpha}"),
            (self.test_size >= 0, f"test_size (--test-size) must be >= 0, got {self.test_size}"),
            (self.crf_iters >= 0, f"crf_iters (--crf-iters) must be >= 0, got {self.crf_iters}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise DeepLabError(f"predict: {message}")
        self.max_pixels()


def output_names(stem: str, cfg: PredictConfig) -> list[str]:
    """The files ``segment_one`` writes for an image ``<stem>``."""
    kinds = ["net", "crf"] if cfg.crf else ["net"]
    names = [f"{stem}_{kind}{end}" for kind in kinds for end in (".png", "_overlay.png")]
    return names + ([f"{stem}_figure.png"] if cfg.side_by_side else [])


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
    """Segment one file and write its outputs (all or none); returns its summary record."""
    from PIL import Image

    from deeplabv1.data.palette import colorize, label_to_pil, read_label_png
    from deeplabv1.io import atomic_paths
    from deeplabv1.predict.images import load_image
    from deeplabv1.viz.figures import overlay, side_by_side

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
    result = seg.predict(rgb, crf=cfg.crf)
    maps = {"net": result.net_labels}
    if cfg.crf:
        maps["crf"] = result.crf_labels
    cmap, names = seg.colormap, seg.class_names
    images = []  # (PIL image to write, in the order of output_names)
    for labels in maps.values():
        blended = overlay(rgb, labels, alpha=cfg.alpha, legend=cfg.legend, class_names=names,
                          colormap=cmap)  # fmt: skip
        images += [label_to_pil(labels, cmap), Image.fromarray(blended)]
    outputs = output_names(stem, cfg)
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
    from deeplabv1.predict.images import BACKGROUNDS, collect_inputs
    from deeplabv1.rundir import run_directory

    cfg.validate()
    if cfg.background not in BACKGROUNDS:
        raise DeepLabError(
            f"--background: use one of {sorted(BACKGROUNDS)}, not {cfg.background!r}"
        )
    if cfg.gt and not Path(cfg.gt).is_dir():
        raise DeepLabError(f"{cfg.gt}: ground-truth folder not found")
    paths, problems = collect_inputs(list(cfg.inputs))
    for msg in problems:
        print(f"deeplabv1 predict: {msg}", file=sys.stderr)
    folders = {f"input {item}": item for item in cfg.inputs if Path(item).is_dir()}
    with run_directory(cfg.output, inputs=[*paths, cfg.weights], input_folders=folders,
                       overwrite=cfg.overwrite, flag="-o") as out_dir:  # fmt: skip
        return _predict_all(cfg, paths, problems, out_dir)


def _predict_all(cfg: PredictConfig, paths: list[Path], problems: list[str], out_dir: Path) -> int:
    from tqdm import tqdm

    from deeplabv1.config import config_to_dict, save_config
    from deeplabv1.errors import describe_failure
    from deeplabv1.io import atomic_write_json, check_outputs
    from deeplabv1.predict.segmenter import Segmenter

    used: set[str] = set()
    stems = [_unique_stem(path, used) for path in paths]
    names = ["predict_config.yaml", "predict_summary.json"]
    names += [name for stem in stems for name in output_names(stem, cfg)]
    check_outputs(out_dir / name for name in names)
    seg = Segmenter.from_checkpoint(
        cfg.weights, device=cfg.device, test_size=cfg.test_size or None,
        crf_params=cfg.crf_params, crf_iters=cfg.crf_iters,
    )  # fmt: skip
    save_config(cfg, out_dir / "predict_config.yaml")
    done, failed = [], []
    for path, stem in tqdm(list(zip(paths, stems)), desc="predict", unit="img", file=sys.stderr,
                           disable=None):  # fmt: skip
        try:
            done.append(segment_one(seg, path, stem, cfg, out_dir))
            if "note" in done[-1]:
                tqdm.write(f"deeplabv1 predict: {path}: {done[-1]['note']}", file=sys.stderr)
        except Exception as exc:  # report the file, keep going with the rest
            msg = describe_failure(path, exc)
            tqdm.write(f"deeplabv1 predict: skipped {msg}", file=sys.stderr)
            failed.append({"input": str(path), "error": msg})
    summary = {"config": config_to_dict(cfg), "images": done, "failed": failed,
               "unmatched": problems}  # fmt: skip
    atomic_write_json(out_dir / "predict_summary.json", summary)
    print(f"deeplabv1 predict: {len(done)} image(s) segmented into {out_dir}, "
          f"{len(failed)} failed, {len(problems)} input(s) matched nothing")  # fmt: skip
    return 1 if failed or problems or not paths else 0
