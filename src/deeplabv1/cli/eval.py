"""``deeplabv1 eval``: mean IoU, per-class IoU and pixel accuracy over a split, with/without CRF.

Examples::

    deeplabv1 eval --weights model.pt --data VOCdevkit/VOC2012 --split val --crf --trimap -o out
    deeplabv1 eval --weights model.pt --data VOC --save-scores scores/ -o out      # keep scores
    deeplabv1 eval --scores scores/ --data VOC --crf --w1 5 --sa 80 --sb 4 -o out2  # no network
    torchrun --nproc-per-node 4 -m deeplabv1 eval --weights model.pt --data VOC --crf -o out3
"""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    """Register ``eval`` with its flags (one per ``EvalConfig`` field, plus -o)."""
    from deeplabv1.evaluate.cli_args import add_config_flags
    from deeplabv1.evaluate.config import EvalConfig

    p = subparsers.add_parser(
        "eval", help="evaluate a model (or saved scores) on a split, with or without the CRF",
        description="Confusion-matrix mean IoU / per-class IoU / pixel accuracy with the paper's "
        "test procedure; optionally the dense CRF, trimap bands and saved score maps. Writes "
        "results.json, results.md and config.yaml into the output folder.",
    )  # fmt: skip
    add_config_flags(p, EvalConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    """Resolve the config, evaluate, print the Markdown summary."""
    import contextlib

    from deeplabv1.config import resolve_config
    from deeplabv1.data.layout import input_folders
    from deeplabv1.distributed.context import env_rank
    from deeplabv1.evaluate.config import EvalConfig
    from deeplabv1.evaluate.run import run_eval
    from deeplabv1.io import check_outputs
    from deeplabv1.rundir import group_run_directory

    cfg = resolve_config(EvalConfig, args)
    cfg.validate()
    rank = env_rank()
    folders = {"--scores": cfg.scores}
    if cfg.data is not None:  # the dataset's own folders: images, labels, split lists
        folders["--data"] = input_folders(cfg.data, cfg.label_dir, cfg.split)
    with contextlib.ExitStack() as stack:
        for flag, folder in (("-o", cfg.out), ("--save-scores", cfg.save_scores)):
            if folder is not None:
                stack.enter_context(group_run_directory(
                    folder, rank=rank, inputs=[cfg.weights], input_folders=folders,
                    overwrite=cfg.overwrite, flag=flag, command="eval"))  # fmt: skip
        out = Path(cfg.out)
        check_outputs(out / n for n in ("config.yaml", "results.json", "results.md", "trimap.png"))
        run_eval(cfg)
    if rank == 0:  # under torchrun, rank 0 reports for all
        print((Path(cfg.out) / "results.md").read_text())
        print(f"results written to {cfg.out}/results.json")
    return 0
