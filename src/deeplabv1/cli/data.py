"""``deeplabv1 data prepare|download|synth|check``: get, merge, synthesise and validate datasets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    """Register ``data`` and its four sub-commands."""
    p = subparsers.add_parser("data", help="prepare, download, synthesise or check datasets",
                              description=__doc__)
    sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    q = sub.add_parser("prepare", help="merge VOC2012 + SBD into SegmentationClassAug/train_aug")
    q.add_argument("--voc", type=Path, required=True, help="VOCdevkit/VOC2012 (or a parent)")
    q.add_argument("--sbd", type=Path, required=True, help="benchmark_RELEASE (or its dataset/)")
    q.add_argument("--out", type=Path, default=None,
                   help="output root (default: the VOC root itself)")
    q.add_argument("--workers", type=int, default=1, help="processes for the label conversion")
    q.add_argument("--strict", action="store_true",
                   help="require the list sizes of the full official releases")
    q.add_argument("--num-classes", type=int, default=21)
    q.set_defaults(func=run_prepare)

    d = sub.add_parser("download", help="fetch and extract the VOC2012 and SBD archives")
    d.add_argument("--root", type=Path, required=True, help="folder for archives and datasets")
    d.add_argument("--source", default=None,
                   help="mirror: a URL or a folder holding the archive files by their names")
    d.add_argument("--only", choices=("voc2012", "sbd"), action="append", default=None,
                   help="fetch only this archive (repeatable)")
    d.add_argument("--voc2012-md5", default=None, help="expected md5 of the VOC2012 archive")
    d.add_argument("--sbd-md5", default=None, help="expected md5 of the SBD archive")
    d.add_argument("--no-extract", action="store_true", help="download and verify only")
    d.set_defaults(func=run_download)

    s = sub.add_parser("synth", help="write a small synthetic dataset in the VOC2012 layout")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--num", type=int, default=200, help="number of images")
    s.add_argument("--size", type=int, nargs=2, default=(160, 120), metavar=("W", "H"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num-classes", type=int, default=6, help="including background")
    s.add_argument("--val-fraction", type=float, default=0.25)
    s.add_argument("--void-width", type=int, default=4, help="void band width in pixels")
    s.set_defaults(func=run_synth)

    c = sub.add_parser("check", help="validate a split: missing files, bad label values")
    c.add_argument("--root", type=Path, required=True, help="VOC-layout root")
    c.add_argument("--split", default="val", help="list name under ImageSets/Segmentation")
    c.add_argument("--label-dir", default=None,
                   help="label folder (default: SegmentationClassAug for *_aug splits)")
    c.add_argument("--num-classes", type=int, default=21)
    c.add_argument("--workers", type=int, default=4)
    c.set_defaults(func=run_check)


def run_prepare(args: argparse.Namespace) -> int:
    from deeplabv1.data.prepare import prepare_aug

    res = prepare_aug(args.voc, args.sbd, args.out, workers=args.workers, strict=args.strict,
                      num_classes=args.num_classes, progress=sys.stderr.isatty())
    for note in res.notes:
        print(f"note: {note}")
    c = res.counts
    print(f"VOC train {c['voc_train']:,}, val {c['voc_val']:,}; "
          f"SBD train {c['sbd_train']:,}, val {c['sbd_val']:,}")
    print(f"train_aug: {c['train_aug']:,} ids; labels: {c['labels']:,} "
          f"({res.written:,} written, {res.skipped:,} up to date) in "
          f"{res.out_root / 'SegmentationClassAug'}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from deeplabv1.data.download import ARCHIVES, download_datasets

    md5 = {"voc2012": args.voc2012_md5, "sbd": args.sbd_md5}
    names = args.only or list(ARCHIVES)
    paths = download_datasets(args.root, names=names, source=args.source,
                              md5={k: v for k, v in md5.items() if v},
                              extract=not args.no_extract, progress=sys.stderr.isatty())
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    import time

    from deeplabv1.data.synth import make_synthetic_voc

    start = time.perf_counter()
    root = make_synthetic_voc(args.out, args.num, size=tuple(args.size), seed=args.seed,
                              num_classes=args.num_classes, val_fraction=args.val_fraction,
                              void_width=args.void_width)
    print(f"wrote {args.num} images ({args.size[0]}x{args.size[1]}) to {root} in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from deeplabv1.data.check import check_dataset

    res = check_dataset(args.root, args.split, args.label_dir, args.num_classes, args.workers)
    print(res.summary())
    return 0 if res.ok else 1
