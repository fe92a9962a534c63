"""``deeplabv1 crf-search``: coarse-to-fine cross-validation of the CRF's w1, sa, sb.

Examples: scores saved by ``deeplabv1 eval --save-scores``, then any model's scores in plain
folders (images, ``<stem>.npy`` scores, ``<stem>.png`` labels)::

    deeplabv1 crf-search --scores scores/ --data VOCdevkit/VOC2012 --split val \\
        --num-images 100 --jobs 8 -o crf_search/          # add --resume after an interruption
    torchrun --nnodes 4 --nproc-per-node 1 ... -m deeplabv1 crf-search --jobs 8 ...  # 4 machines
    deeplabv1 crf-search --image-dir images/ --scores-dir scores/ --label-dir labels/ \\
        [--upsample 8] [--channels-last] [--probabilities] --jobs 8 -o crf_search/
"""

from __future__ import annotations

import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    """Register ``crf-search`` with one flag per ``CRFSearchConfig`` field, plus -o."""
    from deeplabv1.evaluate.cli_args import add_config_flags
    from deeplabv1.evaluate.config import CRFSearchConfig

    p = subparsers.add_parser(
        "crf-search", help="cross-validate the CRF parameters on saved score maps",
        description="Coarse-to-fine search of w1, sa, sb (w2, sg fixed) on the first N images "
        "of a split, from score maps saved by `deeplabv1 eval --save-scores` (--scores, --data), "
        "or of any model's scores: --image-dir, --scores-dir (<stem>.npy, read as `deeplabv1 "
        "crf` reads them) and --label-dir (<stem>.png class indices, 255 void). Reports the best "
        "parameters and their gain over the scores' arg-max. Parallel over processes, "
        "resumable; writes points.jsonl, best.json, search.md and config.yaml.",
    )  # fmt: skip
    add_config_flags(p, CRFSearchConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    """Resolve the config, search, print the table and the best parameters."""
    from deeplabv1.config import resolve_config
    from deeplabv1.data.layout import input_folders
    from deeplabv1.distributed.context import env_rank
    from deeplabv1.evaluate.config import CRFSearchConfig
    from deeplabv1.evaluate.run import run_crf_search
    from deeplabv1.io import check_outputs
    from deeplabv1.rundir import group_run_directory

    cfg = resolve_config(CRFSearchConfig, args)
    cfg.validate()  # before the output folder is made
    folders = {"--scores": cfg.scores, "--image-dir": cfg.image_dir,
               "--scores-dir": cfg.scores_dir, "--label-dir": cfg.label_dir}  # fmt: skip
    if cfg.image_dir is None:  # with --data, --label-dir is a folder under the data root
        folders.pop("--label-dir")
        if cfg.data is not None:  # the dataset's own folders: images, labels, split lists
            folders["--data"] = input_folders(cfg.data, cfg.label_dir, cfg.split)
    rank = env_rank()
    with group_run_directory(cfg.out, rank=rank, input_folders=folders, overwrite=cfg.overwrite,
                             flag="-o", command="crf-search") as out:  # fmt: skip
        check_outputs(out / n for n in ("config.yaml", "points.jsonl", "best.json", "search.md"))
        search = run_crf_search(cfg)
    if rank != 0:  # under torchrun, rank 0 reports for all
        return 0
    print((Path(cfg.out) / "search.md").read_text())
    b, u = search["best"], search["unary"]
    print(f"best: --w1 {b['w1']:g} --sa {b['sa']:g} --sb {b['sb']:g} --w2 {b['w2']:g} "
          f"--sg {b['sg']:g}  (mean IoU {b['mean_iou']:.2f}%, {search['gain']:+.2f} over the "
          f"scores' arg-max {u['mean_iou']:.2f}%; {cfg.out}/best.json)")  # fmt: skip
    if search["skipped"]:
        print(f"deeplabv1 crf-search: {len(search['skipped'])} image(s) skipped (unreadable): "
              f"{', '.join(search['skipped'])}", file=sys.stderr)  # fmt: skip
        return 1
    return 0
