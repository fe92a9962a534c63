"""``deeplabv1 data prepare|download|synth|check``: get, merge, synthesise and validate datasets.

Each action has a typed config in ``deeplabv1.data.config`` (PrepareConfig, DownloadConfig,
SynthConfig, CheckConfig): dataclass defaults < ``--config FILE.yaml`` < flags. prepare, download
and synth save the resolved config beside their outputs (the command prints where).

    deeplabv1 data synth --out synth --num 300 --size 160 120
    deeplabv1 data synth --config synth.yaml --seed 3          # the flag wins over the file
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path


def _action(sub, name: str, cls: type, help_text: str) -> argparse.ArgumentParser:
    """A sub-parser whose description is the config's docstring."""
    return sub.add_parser(name, help=help_text, description=inspect.getdoc(cls),
                          formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip


def _help(cls: type, name: str) -> str:
    from dataclasses import fields

    return next(f.metadata.get("help", "") for f in fields(cls) if f.name == name)


def add_parser(subparsers) -> None:
    """Register ``data`` and its four sub-commands (one flag per config field, plus --config).

    ``deeplabv1.config.add_config_args`` covers most fields; three flag shapes it cannot express
    are added here with the same ``dest`` so that ``resolve_config`` merges them like the rest:
    ``--only`` (repeatable, with choices), ``--no-extract`` (sets ``extract`` false, beside the
    generic ``--extract [BOOL]``) and ``--size W H`` (exactly two integers).
    """
    from deeplabv1.config import add_config_args, field_default
    from deeplabv1.data.config import (
        ARCHIVE_NAMES,
        CheckConfig,
        DownloadConfig,
        PrepareConfig,
        SynthConfig,
    )

    p = subparsers.add_parser("data", help="prepare, download, synthesise or check datasets",
                              description=__doc__.split("\n\n")[0])  # fmt: skip
    sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    q = _action(sub, "prepare", PrepareConfig,
                "merge VOC2012 + SBD into SegmentationClassAug/train_aug")  # fmt: skip
    add_config_args(q, PrepareConfig)
    q.set_defaults(func=run_prepare)

    d = _action(sub, "download", DownloadConfig, "fetch and extract the VOC2012 and SBD archives")
    add_config_args(d, DownloadConfig, skip=("only",))
    d.add_argument("--only", dest="only", choices=ARCHIVE_NAMES, action="append", default=None,
                   help=_help(DownloadConfig, "only"))  # fmt: skip
    d.add_argument("--no-extract", dest="extract", action="store_const", const=False,
                   default=None, help="download and verify only (extract: false)")  # fmt: skip
    d.set_defaults(func=run_download)

    s = _action(sub, "synth", SynthConfig, "write a small synthetic dataset in the VOC2012 layout")
    add_config_args(s, SynthConfig, skip=("size",))
    size = s.add_argument("--size", dest="size", type=int, nargs=2, default=None,
                          metavar=("W", "H"), help=_help(SynthConfig, "size"))  # fmt: skip
    size.shown_default = field_default(SynthConfig, "size")
    s.set_defaults(func=run_synth)

    c = _action(sub, "check", CheckConfig, "validate a split: missing files, bad label values")
    add_config_args(c, CheckConfig)
    c.set_defaults(func=run_check)


def _resolve(cls: type, args: argparse.Namespace):
    """Defaults < --config < flags, then ``validate()``."""
    from deeplabv1.config import resolve_config

    cfg = resolve_config(cls, args)
    cfg.validate()
    return cfg


def run_prepare(args: argparse.Namespace) -> int:
    from deeplabv1.config import save_config
    from deeplabv1.data.config import PREPARE_CONFIG_NAME, PrepareConfig
    from deeplabv1.data.prepare import prepare_aug
    from deeplabv1.data.voc import SEGMENTATION_LISTS, resolve_voc_root
    from deeplabv1.rundir import run_directory

    cfg = _resolve(PrepareConfig, args)
    out_root = resolve_voc_root(cfg.voc) if cfg.out is None else Path(cfg.out)
    with run_directory(out_root, overwrite=cfg.overwrite, flag="--out", command="data prepare"):
        res = prepare_aug(Path(cfg.voc), Path(cfg.sbd), out_root, workers=cfg.workers,
                          strict=cfg.strict, num_classes=cfg.num_classes,
                          progress=sys.stderr.isatty())  # fmt: skip
        saved = res.out_root / SEGMENTATION_LISTS / PREPARE_CONFIG_NAME
        save_config(cfg, saved)
    for note in res.notes:
        print(f"note: {note}")
    c = res.counts
    print(f"VOC train {c['voc_train']:,}, val {c['voc_val']:,}; "
          f"SBD train {c['sbd_train']:,}, val {c['sbd_val']:,}")
    print(f"train_aug: {c['train_aug']:,} ids; labels: {c['labels']:,} "
          f"({res.written:,} written, {res.skipped:,} up to date) in "
          f"{res.out_root / 'SegmentationClassAug'}")
    print(f"config: {saved}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from deeplabv1.config import save_config
    from deeplabv1.data.config import DOWNLOAD_CONFIG_NAME, DownloadConfig
    from deeplabv1.data.download import download_datasets
    from deeplabv1.rundir import run_directory

    cfg = _resolve(DownloadConfig, args)
    with run_directory(cfg.root, overwrite=cfg.overwrite, flag="--root", command="data download"):
        paths = download_datasets(Path(cfg.root), names=cfg.archive_names(), source=cfg.source,
                                  md5=cfg.md5_overrides(), extract=cfg.extract,
                                  progress=sys.stderr.isatty(), overwrite=cfg.overwrite)
        saved = Path(cfg.root) / DOWNLOAD_CONFIG_NAME
        save_config(cfg, saved)
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"config: {saved}")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    import time

    from deeplabv1.config import save_config
    from deeplabv1.data.config import SYNTH_CONFIG_NAME, SynthConfig
    from deeplabv1.data.synth import make_synthetic_voc, remove_stale_samples
    from deeplabv1.rundir import run_directory

    cfg = _resolve(SynthConfig, args)
    start = time.perf_counter()
    with run_directory(cfg.out, overwrite=cfg.overwrite, flag="--out", command="data synth",
                       new_or_own=True):  # fmt: skip
        root = make_synthetic_voc(Path(cfg.out), cfg.num, size=cfg.size, seed=cfg.seed,
                                  num_classes=cfg.num_classes, val_fraction=cfg.val_fraction,
                                  void_width=cfg.void_width)  # fmt: skip
        # the folder is new or synth's own (run_directory checked): its earlier images past
        # --num would otherwise stay beside the new ones
        _, kept = remove_stale_samples(root, cfg.num)
        if kept:
            shown = ", ".join(str(p.relative_to(root)) for p in kept[:3])
            more = f" and {len(kept) - 3} more" if len(kept) > 3 else ""
            print(f"deeplabv1 data synth: note: kept {shown}{more} (past --num {cfg.num}, but "
                  "changed since data synth wrote them, so not deleted)", file=sys.stderr)
        save_config(cfg, root / SYNTH_CONFIG_NAME)
    print(f"wrote {cfg.num} images ({cfg.size[0]}x{cfg.size[1]}) to {root} in "
          f"{time.perf_counter() - start:.1f} s; config: {root / SYNTH_CONFIG_NAME}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from deeplabv1.data.check import check_dataset
    from deeplabv1.data.config import CheckConfig

    cfg = _resolve(CheckConfig, args)
    res = check_dataset(Path(cfg.root), cfg.split, cfg.label_dir, cfg.num_classes, cfg.workers,
                        val_fraction=cfg.val_fraction)  # fmt: skip
    print(res.summary())
    return res.exit_status  # 0 OK, 1 problems, 3 warnings only (deeplabv1.data.check)
