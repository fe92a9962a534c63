"""`deeplabv1 plot`: training logs and evaluation results as figures.

    deeplabv1 plot runs/train/log.jsonl -o curves.png
    deeplabv1 plot runs/eval/results.json runs/eval_crf/results.json -o eval.png

A ``.jsonl`` file is a training log (loss and lr versus iteration); a ``.json`` file is a
``deeplabv1 eval`` results file (per-class IoU bars of every method, and the trimap curve when
the evaluation ran with ``--trimap``). A folder stands for its ``log.jsonl`` and
``results.json`` (a ``train --out-dir`` or an ``eval -o``). All figures go into the one PNG,
stacked top to bottom; ``--separate`` writes them as ``OUT_log.png``, ``OUT_iou.png``,
``OUT_trimap.png`` instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from deeplabv1.errors import DeepLabError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plot", help="plot training logs (.jsonl) and eval results (.json)", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="log.jsonl or results.json files, or folders holding them")
    p.add_argument("-o", "--output", required=True, metavar="OUT.png", help="PNG to write")
    p.add_argument("--separate", action="store_true", help="one PNG per figure (OUT_<kind>.png)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing PNGs deeplabv1 did not write")  # fmt: skip
    p.set_defaults(func=run)


def read_log(path: Path) -> list[dict]:
    """JSONL records; a torn last line (a run killed mid-write) is skipped with a note."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DeepLabError(f"{path}: cannot read ({exc})") from exc
    except UnicodeDecodeError:
        raise DeepLabError(f"{path}: not a training log or results file (not UTF-8 text)") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if n == len(lines):
                print(f"deeplabv1 plot: {path}: skipped torn last line {n}", file=sys.stderr)
                continue
            raise DeepLabError(f"{path}: line {n} is not JSON ({exc.msg})") from exc
        if isinstance(rec, dict):
            records.append(rec)
    return records


def read_results(path: Path) -> dict:
    """An eval results dict (``methods`` with ``per_class_iou``), checked."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DeepLabError(f"{path}: not a readable JSON file ({exc})") from exc
    except UnicodeDecodeError:
        raise DeepLabError(f"{path}: not a training log or results file (not UTF-8 text)") from None
    methods = data.get("methods") if isinstance(data, dict) else None
    if not isinstance(methods, dict) or not all(
        isinstance(m, dict) and isinstance(m.get("per_class_iou"), dict) for m in methods.values()
    ):
        raise DeepLabError(f"{path}: not a deeplabv1 eval results file (no methods/per_class_iou)")
    return data


def _add(target: dict, name: str, value, path: Path) -> None:
    key = name if name not in target else f"{name} ({path.parent.name or path.stem})"
    target[key] = value


def _plot_files(names: list[str]) -> list[Path]:
    """The files to read: each name, or for a folder (a `train --out-dir` or `eval -o`) its
    ``log.jsonl`` and ``results.json``, as ``paper-table`` takes an evaluation's folder."""
    paths = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            found = [path / f for f in ("log.jsonl", "results.json") if (path / f).is_file()]
            if not found:
                raise DeepLabError(f"{path}: a folder holding no log.jsonl or results.json")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise DeepLabError(f"{path}: file not found")
    return paths


def collect(files: list[str]) -> tuple[list[dict], dict, dict]:
    """(log records, {method: per-class IoU}, {method: trimap curve}) from all files."""
    from deeplabv1.evaluate.report import method_name, trimap_curves

    records: list[dict] = []
    per_class: dict = {}
    curves: dict = {}
    for path in _plot_files(files):
        if path.suffix.lower() == ".jsonl":
            log = read_log(path)
            if not any("iter" in r and ("loss" in r or "lr" in r) for r in log):
                raise DeepLabError(f"{path}: no records with 'iter' and 'loss' or 'lr' to plot")
            records += log
            continue
        results = read_results(path)
        arch = results.get("model", {}).get("arch")
        for m, r in results["methods"].items():
            _add(per_class, method_name(arch, m == "crf"), r["per_class_iou"], path)
        if results.get("trimap"):
            for method, curve in trimap_curves(results).items():
                _add(curves, method, curve, path)
    return records, per_class, curves


def stack_pngs(paths: list[Path], out: Path) -> None:
    """Stack PNGs top to bottom (centred, white background) into ``out`` atomically."""
    from PIL import Image

    from deeplabv1.io import atomic_path

    images = [Image.open(p).convert("RGB") for p in paths]
    width = max(im.width for im in images)
    canvas = Image.new("RGB", (width, sum(im.height for im in images)), "white")
    y = 0
    for im in images:
        canvas.paste(im, ((width - im.width) // 2, y))
        y += im.height
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")


def run(args: argparse.Namespace) -> int:
    from deeplabv1.io import output_rules

    files = [str(p) for p in _plot_files(args.files)]  # the files a folder stands for
    with output_rules(files, overwrite=args.overwrite, command="plot"):
        return _plot(argparse.Namespace(**{**vars(args), "files": files}))


def check_png_output(path: Path, label: str, writes: str) -> None:
    """DeepLabError unless ``path`` (the ``label`` output) ends in .png: a figure written under
    another suffix (a .txt, a photo's .jpg) would pass for what it is not."""
    if path.suffix.lower() != ".png":
        what = f"suffix {path.suffix!r}" if path.suffix else "no suffix"
        raise DeepLabError(f"{path}: {label} has {what}: {writes} (use .png)")


def _plot(args: argparse.Namespace) -> int:
    from deeplabv1.io import check_outputs
    from deeplabv1.viz.plots import plot_class_iou, plot_training_log, plot_trimap

    out = Path(args.output)
    check_png_output(out, "output", "plot writes PNG images")
    records, per_class, curves = collect(args.files)
    jobs = []
    if records:
        jobs.append(("log", lambda p: plot_training_log(records, p, title="Training log")))
    if per_class:
        jobs.append(("iou", lambda p: plot_class_iou(per_class, p)))
    if curves:
        jobs.append(("trimap", lambda p: plot_trimap(curves, p)))
    if not jobs:
        raise DeepLabError(f"{', '.join(args.files)}: nothing to plot")
    names = [out.with_name(f"{out.stem}_{kind}.png") for kind, _ in jobs]
    check_outputs(names if args.separate else [out])
    if args.separate:
        written = [draw(name) for name, (_, draw) in zip(names, jobs)]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            parts = [draw(Path(tmp) / f"{kind}.png") for kind, draw in jobs]
            stack_pngs(parts, out)
        written = [out]
    print(f"deeplabv1 plot: wrote {', '.join(str(p) for p in written)}")
    return 0
