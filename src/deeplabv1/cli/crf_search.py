"""``deeplabv1 crf-search``: coarse-to-fine cross-validation of the CRF's w1, sa, sb.

Example (scores saved by ``deeplabv1 eval --save-scores``)::

    deeplabv1 crf-search --scores scores/ --data VOCdevkit/VOC2012 --split val \\
        --num-images 100 --jobs 8 -o crf_search/          # add --resume after an interruption
    torchrun --nnodes 4 --nproc-per-node 1 ... -m deeplabv1 crf-search --jobs 8 ...  # 4 machines
"""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    """Register ``crf-search`` with one flag per ``CRFSearchConfig`` field, plus -o."""
    from deeplabv1.evaluate.cli_args import add_config_flags
    from deeplabv1.evaluate.config import CRFSearchConfig

    p = subparsers.add_parser(
        "crf-search", help="cross-validate the CRF parameters on saved score maps",
        description="Coarse-to-fine search of w1, sa, sb (w2, sg fixed) on the first N images "
        "of a split, from score maps saved by `deeplabv1 eval --save-scores`. Parallel over "
        "processes, resumable; writes points.jsonl, best.json, search.md and config.yaml.",
    )  # fmt: skip
    add_config_flags(p, CRFSearchConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    """Resolve the config, search, print the table and the best parameters."""
    from deeplabv1.config import resolve_config
    from deeplabv1.distributed.context import env_rank
    from deeplabv1.evaluate.config import CRFSearchConfig
    from deeplabv1.evaluate.run import run_crf_search
    from deeplabv1.io import check_outputs
    from deeplabv1.rundir import group_run_directory

    cfg = resolve_config(CRFSearchConfig, args)
    rank = env_rank()
    with group_run_directory(cfg.out, rank=rank, overwrite=cfg.overwrite, flag="-o") as out:
        check_outputs(out / n for n in ("config.yaml", "points.jsonl", "best.json", "search.md"))
        search = run_crf_search(cfg)
    if rank != 0:  # under torchrun, rank 0 reports for all
        return 0
    print((Path(cfg.out) / "search.md").read_text())
    b = search["best"]
    print(f"best: --w1 {b['w1']:g} --sa {b['sa']:g} --sb {b['sb']:g} --w2 {b['w2']:g} "
          f"--sg {b['sg']:g}  (mean IoU {b['mean_iou']:.2f}%; {cfg.out}/best.json)")  # fmt: skip
    return 0
