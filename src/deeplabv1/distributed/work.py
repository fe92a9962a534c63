"""Per-item work over ranks: complete outputs, merged summaries, the setup record, failing together.

A command that writes outputs per item (an image's predictions, its saved scores) uses these
pieces the same way with one process or many:

- ``split_complete`` separates the items whose outputs are all present: every output is written
  atomically (a temporary file renamed into place), so a present file is a whole one, and a
  rerun after a crash of any rank skips those items;
- ``record_setup`` keeps, beside the per-item outputs, the settings they were made with; a
  resumed run refuses outputs made with other settings instead of mixing them;
- every rank keeps a :class:`WorkSummary` (processed / failed / skipped, by name);
  ``gather_summaries`` merges them on every rank and ``write_summary`` writes the merged
  summary once, from rank 0;
- ``on_main``, ``on_every_rank`` and ``check_all`` turn an error on one rank into the same
  error on every rank (a ``GroupError``, which only rank 0 prints), so that no rank waits
  forever in a collective for one that gave up;
- ``close_work`` ends a run: the merged counts on every rank, and the setup record marked
  current when nothing failed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from deeplabv1.distributed.context import DistInfo, broadcast_object, gather_objects
from deeplabv1.errors import DeepLabError, os_error_message
from deeplabv1.io import atomic_write_json

T = TypeVar("T")


def outputs_complete(paths: Iterable[str | os.PathLike]) -> bool:
    """True when every path is an existing file (outputs are written atomically)."""
    return all(Path(p).is_file() for p in paths)


def split_complete(
    items: Sequence[T], outputs_of: Callable[[T], Iterable[str | os.PathLike]]
) -> tuple[list[T], list[T]]:
    """(to do, done): the items whose outputs are not all present, and those whose are."""
    todo, done = [], []
    for item in items:
        (done if outputs_complete(outputs_of(item)) else todo).append(item)
    return todo, done


@dataclass
class WorkSummary:
    """What one rank did with its items, by name."""

    rank: int = 0
    processed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> error
    seconds: float = 0.0


def merge_summaries(summaries: Sequence[WorkSummary]) -> dict:
    """One JSON-ready summary of every rank's: names sorted, counts, and a line per rank."""
    failed = {name: err for s in summaries for name, err in s.failed.items()}
    return {
        "world_size": len(summaries),
        "counts": {
            "processed": sum(len(s.processed) for s in summaries),
            "skipped": sum(len(s.skipped) for s in summaries),
            "failed": len(failed),
        },
        "processed": sorted(n for s in summaries for n in s.processed),
        "skipped": sorted(n for s in summaries for n in s.skipped),
        "failed": [{"name": n, "error": failed[n]} for n in sorted(failed)],
        "ranks": [
            {"rank": s.rank, "processed": len(s.processed), "skipped": len(s.skipped),
             "failed": len(s.failed), "seconds": round(s.seconds, 3)}
            for s in sorted(summaries, key=lambda s: s.rank)
        ],
    }  # fmt: skip


def gather_summaries(summary: WorkSummary, info: DistInfo) -> dict:
    """Every rank's summary merged (``merge_summaries``), on every rank."""
    return merge_summaries(gather_objects(summary, info))


def write_summary(path: str | os.PathLike, merged: dict, info: DistInfo) -> Path | None:
    """Write the merged summary atomically from rank 0 (other ranks write nothing)."""
    if not info.is_main:
        return None
    atomic_write_json(path, merged)
    return Path(path)


class GroupError(DeepLabError):
    """An error raised with the same message on every rank of a torchrun group (by
    ``check_all``, ``on_main``, ``on_every_rank``): rank 0 reports it, the others need not."""


_RANK_PREFIX = re.compile(r"rank \d+: ")


def check_all(error: str | None, info: DistInfo, what: str) -> None:
    """Raise GroupError on every rank when any rank reports an error (None: no error).

    Every rank must call it at the same point; ``what`` names the step in the message. The
    same error on every rank (a missing checkpoint, say) is reported once, without the ranks.
    """
    errors = [e for e in gather_objects(error, info) if e]
    if errors:
        if len(errors) == 1:
            raise GroupError(errors[0])
        plain = {_RANK_PREFIX.sub("", e, count=1) for e in errors}
        if len(plain) == 1 and len(errors) == info.world_size:
            raise GroupError(plain.pop())
        raise GroupError(f"{what}: {len(errors)} processes failed: " + "; ".join(errors))


def on_main(fn: Callable[[], T], info: DistInfo) -> T:
    """``fn()`` run by rank 0 only, its value given to every rank; a DeepLabError raised by
    ``fn`` is raised on every rank."""
    if not info.distributed:
        return fn()
    value, error = None, None
    if info.is_main:
        try:
            value = fn()
        except DeepLabError as exc:
            error = str(exc)
    value, error = broadcast_object((value, error), info)
    if error is not None:
        raise GroupError(error)
    return value


def on_every_rank(fn: Callable[[], T], info: DistInfo, what: str) -> T:
    """``fn()`` run by every rank; an exception on any rank is a DeepLabError on every rank
    (its traceback printed where it is not a DeepLabError). Alone, ``fn``'s exceptions pass
    through unchanged."""
    if not info.distributed:
        return fn()
    value, error = None, None
    try:
        value = fn()
    except Exception as exc:
        if isinstance(exc, DeepLabError):
            message = str(exc)
        elif isinstance(exc, OSError):  # a file this rank could not read or write: no traceback
            message = os_error_message(exc)
        else:
            import traceback

            traceback.print_exc()
            message = repr(exc)
        error = f"rank {info.rank}: {message}"
    check_all(error, info, what)
    return value


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks: for setup records."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _differences(old: dict, new: dict) -> list[str]:
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return [f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in changed]


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DeepLabError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(record, dict) or not isinstance(record.get("setup"), dict):
        raise DeepLabError(f"{path}: not a setup record")
    return record


def record_setup(path: str | os.PathLike, setup: dict, resume: bool, info: DistInfo) -> None:
    """Keep ``setup`` (JSON-ready: what the per-item outputs in ``path``'s folder depend on).

    Without ``resume`` the record is (re)written, noting whether the folder already held
    outputs of an earlier run (which this run may not overwrite all of). With ``resume`` the
    outputs are reused only if the record exists, matches ``setup`` and was not written over
    an earlier run's outputs; otherwise a DeepLabError (on every rank) says why, rather than
    mixing outputs of different settings. Rank 0 reads and writes; the others wait for it.
    The folder's lock and list of outputs (``deeplabv1.rundir``, ``deeplabv1.io``) are not
    outputs: the record may live in a command's locked output folder itself.
    """
    from deeplabv1.io import OUTPUTS_LIST
    from deeplabv1.rundir import LOCK_NAME

    path = Path(path)
    not_outputs = {path.name, LOCK_NAME, OUTPUTS_LIST}

    def check_and_write() -> None:
        folder = path.parent
        earlier = folder.is_dir() and any(p.name not in not_outputs for p in folder.iterdir())
        if not resume:
            atomic_write_json(path, {"setup": setup, "over_earlier_outputs": earlier})
            return
        if not path.is_file():
            if earlier:
                raise DeepLabError(
                    f"{path.parent}: holds outputs but no {path.name}; cannot "
                    "tell what they were made with, so they cannot be resumed"
                )
            atomic_write_json(path, {"setup": setup, "over_earlier_outputs": False})
            return
        record = _read_record(path)
        diff = _differences(record["setup"], setup)
        if diff:
            raise DeepLabError(
                f"{path.parent}: these outputs were made with other settings "
                f"({'; '.join(diff)}); use a new output folder"
            )
        if record.get("over_earlier_outputs"):
            raise DeepLabError(
                f"{path.parent}: the run that wrote these outputs started over an "
                "earlier run's outputs, so which are current is unknown; rerun "
                "without --resume or use a new output folder"
            )

    on_main(check_and_write, info)


def mark_outputs_current(path: str | os.PathLike, info: DistInfo) -> None:
    """After a run that wrote (or found complete) the outputs of every item it was given, with
    no failure: the record's ``over_earlier_outputs`` no longer applies (every output of these
    items is this run's), so a later ``resume`` may use them. Rank 0 rewrites the record."""
    path = Path(path)

    def clear() -> None:
        record = _read_record(path)
        if record.get("over_earlier_outputs"):
            atomic_write_json(path, {**record, "over_earlier_outputs": False})

    on_main(clear, info)


def close_work(counts: dict | None, setup_path: str | os.PathLike, info: DistInfo) -> dict:
    """The end of a run over ranks: rank 0's merged ``counts`` (``merge_summaries``; ignored
    elsewhere) on every rank, and, when none failed, the setup record at ``setup_path`` marked
    current (``mark_outputs_current``). Every rank calls it at the same point."""
    counts = broadcast_object(counts if info.is_main else None, info)
    if not counts["failed"]:  # every item's outputs are this run's (or resumed)
        mark_outputs_current(setup_path, info)
    return counts
