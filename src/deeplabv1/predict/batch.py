"""``deeplabv1 predict``: segment many images, writing label maps, overlays and figures.

Outputs per input image ``<stem>`` in the output folder (``<stem>-2`` etc. when two inputs share
a stem):

- ``<stem>_net.png``: network labels, palette PNG (pixel value = class index; the colours are
  the checkpoint's palette, VOC's by default)
- ``<stem>_net_overlay.png``: those labels blended over the image, with a legend of the
  checkpoint's class names
- with ``--crf``: ``<stem>_crf.png`` and ``<stem>_crf_overlay.png`` (network + CRF)
- with ``--side-by-side``: ``<stem>_figure.png`` (image | network | network + CRF | truth)

plus ``predict_config.yaml`` (the resolved settings), ``predict_setup.json`` (what the outputs
depend on, checked by ``--resume``) and ``predict_summary.json`` (per image: input, size,
classes found, outputs, seconds; the failures and the skipped images by name; counts). A file
that cannot be read or segmented is reported by name and skipped; the run goes on and returns
exit status 1. An image's outputs are written together (``deeplabv1.io.atomic_paths``): a
failed or interrupted image leaves none of them, so an image whose files are all present is
complete, and ``--resume`` skips it. The output folder is a ``deeplabv1.rundir.run_directory``
(one run at a time, never an input folder), and every output is checked before the first
image: never an input, never a file deeplabv1 did not write unless ``overwrite``.

Under torchrun (``deeplabv1.distributed``) every rank segments its block of the input list
(``shard``: the list in input order, folders and globs sorted, cut into contiguous blocks) on
its own device (``--device cuda``: ``cuda:LOCAL_RANK``) and writes those images' outputs; rank
0 holds the folder's lock, writes the config, setup and the merged summary, and returns the
exit status for all. With ``--resume`` the images left to do are split over the ranks."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from deeplabv1.crf.params import variant_problem
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
        default=None, metadata={"help": "CRF variant (default: the checkpoint's, else its arch's)",
                                "check": variant_problem},
    )  # fmt: skip
    crf_iters: int = field(default=10, metadata={"help": "mean-field iterations"})
    crf_device: Literal["auto", "cpu", "same"] = field(
        default="auto",
        metadata={"help": "where the CRF runs: auto (the network's GPU, else the CPU engine), "
                  "cpu, same"},
    )  # fmt: skip
    crf_batch_size: int | None = field(
        default=None,
        metadata={"help": "images of one size per CRF call (default: 8 on a GPU, 1 on the CPU)"},
    )
    device: str = field(
        default="cpu", metadata={"help": "cpu, cuda, cuda:N or auto (torchrun: cuda:LOCAL_RANK)"}
    )
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
    resume: bool = field(
        default=False,
        metadata={"help": "skip images whose outputs an earlier run with the same settings "
                  "and inputs left complete in the output folder"},
    )  # fmt: skip

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
            (self.crf_batch_size is None or self.crf_batch_size >= 1,
             f"crf_batch_size (--crf-batch-size) must be >= 1, got {self.crf_batch_size}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise DeepLabError(f"predict: {message}")
        self.max_pixels()


def output_names(stem: str, cfg: PredictConfig) -> list[str]:
    """The files written for an image ``<stem>`` (``pipeline.write_outputs``)."""
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


SUMMARY = "predict_summary.json"
CONFIG = "predict_config.yaml"
SETUP = "predict_setup.json"


def run_predict(cfg: PredictConfig) -> int:
    """Run ``deeplabv1 predict``, under torchrun or alone; returns 0, or 1 when any input
    failed (rank 0; the other ranks return 0). See the module doc."""
    from deeplabv1.data.layout import dataset_of_image_folder, input_folders
    from deeplabv1.distributed.context import RANK_WAIT, distributed_session, env_rank
    from deeplabv1.predict.images import BACKGROUNDS, collect_inputs
    from deeplabv1.rundir import group_run_directory

    cfg.validate()
    if cfg.background not in BACKGROUNDS:
        raise DeepLabError(
            f"--background: use one of {sorted(BACKGROUNDS)}, not {cfg.background!r}"
        )
    if cfg.gt and not Path(cfg.gt).is_dir():
        raise DeepLabError(f"{cfg.gt}: ground-truth folder not found")
    paths, problems = collect_inputs(list(cfg.inputs))
    rank = env_rank()
    for msg in problems if rank == 0 else ():
        print(f"deeplabv1 predict: {msg}", file=sys.stderr)
    folders: dict = {f"input {item}": item for item in cfg.inputs if Path(item).is_dir()}
    for item in list(folders.values()):  # a dataset's images/: none of its folders either
        root = dataset_of_image_folder(item)
        if root is not None:
            folders[f"dataset {root}"] = input_folders(root)
    folder = group_run_directory(cfg.output, rank=rank, inputs=[*paths, cfg.weights],
                                 input_folders=folders, overwrite=cfg.overwrite,
                                 flag="-o", command="predict")  # fmt: skip
    with folder as out_dir, distributed_session(cfg.device, RANK_WAIT) as dist:
        return predict_in_group(cfg, paths, problems, out_dir, dist)


def predict_setup(cfg: PredictConfig, seg, paths: list[Path]) -> dict:
    """What the per-image outputs depend on (``--resume`` reuses them only if it matches):
    the weights' bytes, the input list, and every setting that changes an output file."""
    import dataclasses
    import hashlib
    import os

    from deeplabv1.distributed.work import file_sha256

    # os.fsencode: file names that are not UTF-8 hash as their bytes
    listing = os.fsencode("\n".join(str(p.resolve()) for p in paths))
    figure_gt = cfg.side_by_side and cfg.gt
    return {"weights_sha256": file_sha256(cfg.weights),
            "inputs": {"count": len(paths), "sha256": hashlib.sha256(listing).hexdigest()},
            "crf": cfg.crf,
            "crf_params": dataclasses.asdict(seg.crf_params) if cfg.crf else None,
            "crf_iters": cfg.crf_iters if cfg.crf else None,
            "test_size": cfg.test_size, "background": cfg.background, "alpha": cfg.alpha,
            "legend": cfg.legend, "side_by_side": cfg.side_by_side,
            "gt": str(Path(cfg.gt).resolve()) if figure_gt else None}  # fmt: skip


def predict_in_group(
    cfg: PredictConfig, paths: list[Path], problems: list[str], out_dir: Path, dist
) -> int:
    """Segment this rank's share of ``paths`` into ``out_dir``; rank 0 writes the run's files
    and returns the exit status (the others return 0)."""
    from tqdm import tqdm

    from deeplabv1.config import save_config
    from deeplabv1.distributed.shard import shard
    from deeplabv1.distributed.work import (
        WorkSummary,
        close_work,
        on_every_rank,
        on_main,
        record_setup,
        split_complete,
    )
    from deeplabv1.errors import describe_failure
    from deeplabv1.io import check_outputs
    from deeplabv1.predict.pipeline import segment_files
    from deeplabv1.predict.segmenter import Segmenter

    used: set[str] = set()
    stems = [_unique_stem(path, used) for path in paths]
    names = [CONFIG, SUMMARY, SETUP] + [n for stem in stems for n in output_names(stem, cfg)]
    on_main(lambda: check_outputs(out_dir / name for name in names), dist)
    seg = on_every_rank(lambda: Segmenter.from_checkpoint(
        cfg.weights, device=dist.device, test_size=cfg.test_size or None,
        crf_params=cfg.crf_params, crf_iters=cfg.crf_iters, crf_device=cfg.crf_device,
    ), dist, "predict")  # fmt: skip
    setup = predict_setup(cfg, seg, paths) if dist.is_main else {}
    record_setup(out_dir / SETUP, setup, cfg.resume, dist)
    on_main(lambda: save_config(cfg, out_dir / CONFIG), dist)
    todo, skipped = list(range(len(paths))), []
    if cfg.resume:
        todo, skipped = on_main(lambda: split_complete(
            todo, lambda i: [out_dir / n for n in output_names(stems[i], cfg)]), dist)  # fmt: skip
    summary = WorkSummary(rank=dist.rank)
    if dist.is_main:  # rank 0 found them and reports them
        summary.skipped = [str(paths[i]) for i in skipped]
    records: dict[str, dict] = {}

    def done(record: dict) -> None:
        records[record["input"]] = record
        summary.processed.append(record["input"])
        if "note" in record:
            tqdm.write(f"deeplabv1 predict: {record['input']}: {record['note']}", file=sys.stderr)

    def failed(path: Path, exc: Exception) -> None:
        msg = describe_failure(path, exc)
        tqdm.write(f"deeplabv1 predict: skipped {msg}", file=sys.stderr)
        summary.failed[str(path)] = msg

    mine = [(paths[i], stems[i]) for i in shard(todo, dist.rank, dist.world_size)]
    start = time.perf_counter()
    on_every_rank(lambda: segment_files(seg, mine, cfg, out_dir, on_done=done, on_failed=failed,
                                        progress=None if dist.is_main else False),
                  dist, "predict")  # fmt: skip
    summary.seconds = time.perf_counter() - start
    report = merged_summary(cfg, paths, problems, summary, records, out_dir, dist)
    counts = close_work(report["counts"] if dist.is_main else None, out_dir / SETUP, dist)
    if not dist.is_main:
        return 0
    resumed = f", {counts['skipped']} skipped (outputs complete)" if cfg.resume else ""
    print(f"deeplabv1 predict: {counts['processed']} image(s) segmented into {out_dir}{resumed}, "
          f"{counts['failed']} failed, {counts['unmatched']} input(s) matched nothing")  # fmt: skip
    return 1 if counts["failed"] or problems or not paths else 0


def merged_summary(cfg, paths, problems, summary, records: dict, out_dir, dist) -> dict | None:
    """Every rank's summary and image records merged on rank 0 (images in input order) and
    written to ``predict_summary.json``; returned on rank 0 (None on the others)."""
    from deeplabv1.config import config_to_dict
    from deeplabv1.distributed.context import gather_to_main
    from deeplabv1.distributed.work import merge_summaries, on_main
    from deeplabv1.io import atomic_write_json

    gathered = gather_to_main((summary, records), dist)
    report = None
    if dist.is_main:
        merged = merge_summaries([s for s, _ in gathered])
        every = {name: r for _, recs in gathered for name, r in recs.items()}
        order = {str(p): i for i, p in enumerate(paths)}
        report = {
            "config": config_to_dict(cfg),
            "counts": {**merged["counts"], "unmatched": len(problems)},
            "images": [every[name] for name in sorted(every, key=order.__getitem__)],
            "failed": [{"input": f["name"], "error": f["error"]}
                       for f in sorted(merged["failed"], key=lambda f: order[f["name"]])],
            "skipped": sorted(merged["skipped"], key=order.__getitem__),
            "unmatched": problems,
            "world_size": merged["world_size"],
            "ranks": merged["ranks"],
        }  # fmt: skip
    on_main(lambda: atomic_write_json(Path(out_dir) / SUMMARY, report), dist)
    return report
