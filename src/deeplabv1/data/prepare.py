"""``deeplabv1 data prepare``: merge VOC 2012 and SBD into SegmentationClassAug + train_aug.

Labels: every id of SBD (train + val) and of VOC's segmentation lists gets
``SegmentationClassAug/<id>.png`` (VOC palette PNG of class indices). Where VOC has its own
annotation (the id is in VOC's train or val list) that one is used, with its 255 void band;
elsewhere SBD's ``GTcls.Segmentation``, which has no void band. With the full datasets that is
12,031 label files.

Lists (ImageSets/Segmentation/): ``train_aug`` = (SBD train + SBD val + VOC train) minus VOC val,
sorted, unique: 10,582 ids with the full datasets; ``trainval_aug`` = train_aug + VOC val (the
second training stage of the paper).
"""

from __future__ import annotations

import dataclasses
import faulthandler
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from PIL import Image

from deeplabv1.data.datasets import find_image
from deeplabv1.data.palette import read_label_png, save_label_png
from deeplabv1.data.sbd import read_sbd_mat, resolve_sbd_root, sbd_split_ids
from deeplabv1.data.voc import (
    AUG_LABEL_DIR,
    SEGMENTATION_LISTS,
    VOC_LABEL_DIR,
    read_ids,
    resolve_voc_root,
    write_ids,
)  # fmt: skip
from deeplabv1.errors import DeepLabError
from deeplabv1.io import check_outputs

# sizes of the official releases (VOC2012 segmentation lists, SBD lists) and of their merge
EXPECTED_COUNTS = {
    "voc_train": 1464, "voc_val": 1449, "sbd_train": 8498, "sbd_val": 2857,
    "train_aug": 10582, "labels": 12031,
}  # fmt: skip


@dataclasses.dataclass
class PrepareResult:
    """What ``prepare_aug`` did: list sizes, files written and skipped, and notes for the user."""

    out_root: Path
    counts: dict[str, int]
    written: int = 0
    skipped: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)


def _name_list(paths: list[Path], limit: int = 10) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def check_counts(counts: dict[str, int], strict: bool) -> list[str]:
    """Compare list sizes with the official releases; notes, or an error when inconsistent."""
    inputs = ("voc_train", "voc_val", "sbd_train", "sbd_val")
    full = all(counts[k] == EXPECTED_COUNTS[k] for k in inputs)
    notes, errors = [], []
    for key in inputs + ("train_aug", "labels"):
        if counts[key] != EXPECTED_COUNTS[key]:
            expected = EXPECTED_COUNTS[key]
            msg = f"{key}: {counts[key]:,} ids where the full datasets give {expected:,}"
            (errors if (full or strict) else notes).append(msg)
    if errors:
        why = "the input lists have the official sizes but" if full else "--strict:"
        raise DeepLabError(f"{why} " + "; ".join(errors))
    if notes:
        notes.insert(0, "inputs differ from the full VOC2012 + SBD releases (a subset?)")
    return notes


def _up_to_date(src: Path, dst: Path) -> bool:
    return dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime


def _convert(task: tuple[str, str, str, str, int]) -> bool:
    """Write one label PNG from a VOC PNG or an SBD .mat; False if it was up to date."""
    kind, src, dst, image, num_classes = task
    src_p, dst_p = Path(src), Path(dst)
    if _up_to_date(src_p, dst_p):
        return False
    read = read_label_png if kind == "voc" else read_sbd_mat
    labels = read(src_p, num_classes)
    try:
        with Image.open(image) as img:
            size = img.size
    except OSError as exc:
        raise DeepLabError(f"{image}: cannot read image ({exc})") from exc
    if (labels.shape[1], labels.shape[0]) != size:
        raise DeepLabError(
            f"{src}: label size {labels.shape[1]}x{labels.shape[0]} differs from image {image} "
            f"size {size[0]}x{size[1]}"
        )
    save_label_png(dst_p, labels)
    return True


def _link_voc_layout(voc: Path, out: Path) -> None:
    """Make ``out`` a complete VOC root: links to VOC's images and labels, copies of its lists."""
    for name in ("JPEGImages", VOC_LABEL_DIR):
        link = out / name
        if not link.exists() and (voc / name).is_dir():
            link.symlink_to((voc / name).resolve(), target_is_directory=True)
    for lst in sorted((voc / SEGMENTATION_LISTS).glob("*.txt")):
        dst = out / SEGMENTATION_LISTS / lst.name
        if not dst.exists():
            write_ids(dst, read_ids(lst))


def prepare_aug(
    voc_root: str | os.PathLike,
    sbd_root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    workers: int = 1,
    strict: bool = False,
    num_classes: int = 21,
    progress: bool = False,
) -> PrepareResult:
    """Write SegmentationClassAug/ and the train_aug / trainval_aug lists; see the module doc.

    ``out`` defaults to the VOC root; another folder gets links to VOC's JPEGImages and
    SegmentationClass so that it is a complete VOC-layout root. Outputs are written atomically
    and skipped when newer than their source. Missing inputs are an error that names them; so
    are bad ones (unreadable, wrong size, bad values): every input is tried and all bad files
    are named in one error, after the good ones were converted (the lists are then not written).
    Under ``deeplabv1.io.output_rules`` the outputs to (re)write are checked before any work.
    """
    voc, sbd = resolve_voc_root(voc_root), resolve_sbd_root(sbd_root)
    out_root = voc if out is None else Path(out)
    lists = voc / SEGMENTATION_LISTS
    voc_train, voc_val = read_ids(lists / "train.txt"), read_ids(lists / "val.txt")
    sbd_ids = {s: sbd_split_ids(sbd, s) for s in ("train", "val")}
    val_set = set(voc_val)
    train_aug = sorted((set(sbd_ids["train"]) | set(sbd_ids["val"]) | set(voc_train)) - val_set)
    voc_labelled = set(voc_train) | val_set
    all_ids = sorted(voc_labelled | set(sbd_ids["train"]) | set(sbd_ids["val"]))
    counts = {
        "voc_train": len(voc_train), "voc_val": len(voc_val),
        "sbd_train": len(sbd_ids["train"]), "sbd_val": len(sbd_ids["val"]),
        "train_aug": len(train_aug), "labels": len(all_ids),
    }  # fmt: skip
    notes = check_counts(counts, strict)

    tasks, missing = [], {"image": [], "VOC label": [], "SBD label": []}
    for sid in all_ids:
        image = find_image(voc / "JPEGImages", sid)
        if not image.is_file():
            missing["image"].append(image)
        if sid in voc_labelled:
            kind, src = "voc", voc / VOC_LABEL_DIR / f"{sid}.png"
        else:
            kind, src = "sbd", sbd / "cls" / f"{sid}.mat"
        if not src.is_file():
            missing[f"{kind.upper()} label"].append(src)
        dst = out_root / AUG_LABEL_DIR / f"{sid}.png"
        tasks.append((kind, str(src), str(dst), str(image), num_classes))
    problems = [f"{len(v):,} missing {k} file(s): {_name_list(v)}" for k, v in missing.items() if v]
    if problems:
        raise DeepLabError("; ".join(problems))

    lists_dir = out_root / SEGMENTATION_LISTS
    stale = [Path(t[2]) for t in tasks if not _up_to_date(Path(t[1]), Path(t[2]))]
    check_outputs([*stale, lists_dir / "train_aug.txt", lists_dir / "trainval_aug.txt"])
    result = PrepareResult(out_root, counts, notes=notes)
    done = _run_tasks(tasks, max(1, workers), progress)
    bad = [msg for msg in done if isinstance(msg, str)]
    if bad:
        shown = "\n  ".join(bad[:50]) + (f"\n  ... and {len(bad) - 50} more" if len(bad) > 50
                                          else "")  # fmt: skip
        raise DeepLabError(f"{len(bad)} bad input file(s) (the other labels were written; "
                           f"fix these and run again):\n  {shown}")  # fmt: skip
    result.written = sum(done)
    result.skipped = len(done) - result.written
    if out_root != voc:
        _link_voc_layout(voc, out_root)
    write_ids(out_root / SEGMENTATION_LISTS / "train_aug.txt", train_aug)
    write_ids(out_root / SEGMENTATION_LISTS / "trainval_aug.txt", sorted(set(train_aug) | val_set))
    return result


_MARK_DIR: str | None = None  # set in worker processes: where each notes the file it reads


def _set_mark_dir(path: str) -> None:
    global _MARK_DIR
    _MARK_DIR = path
    # A crash is reported by the parent, naming the file; a forked worker's inherited
    # faulthandler would only add a stack dump of the parent's frames.
    faulthandler.disable()


def _convert_marked(task: tuple) -> bool | str:
    """``_convert``, or the message naming the bad file (the other files go on)."""
    mark = Path(_MARK_DIR or ".") / f"{os.getpid()}.current"
    if _MARK_DIR:
        mark.write_text(task[1])
    try:
        done = _convert(task)
    except DeepLabError as exc:
        done = str(exc)
    if _MARK_DIR:
        mark.unlink()
    return done


def _run_tasks(tasks: list[tuple], workers: int, progress: bool) -> list[bool | str]:
    """Convert in worker processes, even for one worker: scipy's loadmat is not hardened
    against corrupt files (a bit flip in an uncompressed .mat can crash the interpreter), so a
    crash costs a worker, and the file it was reading is named in the error."""
    with tempfile.TemporaryDirectory() as marks, ProcessPoolExecutor(
        workers, initializer=_set_mark_dir, initargs=(marks,)
    ) as pool:
        results = pool.map(_convert_marked, tasks, chunksize=16)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(tasks), desc="labels", unit="file")
        try:
            return list(results)
        except BrokenProcessPool as exc:
            culprits = sorted(p.read_text() for p in Path(marks).glob("*.current"))
            raise DeepLabError(
                f"{', '.join(culprits) or 'an input file'}: a worker process crashed reading "
                "it (corrupt file? scipy.io.loadmat does not survive every corruption); "
                "re-extract it from the archive"
            ) from exc
