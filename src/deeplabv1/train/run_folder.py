"""The run folder of ``train``: what an earlier run left in it, and how a new run continues
it (``resume``) or replaces it (``overwrite``).

A folder holding an earlier run (its final.pt, checkpoints or log) is only continued or, with
``overwrite``, replaced by the new run (``EarlierRun``: nothing of it is touched until every
input is checked, and it is put back should the new run stop before its first checkpoint); a
fresh run never mixes with it. Only checkpoints ``train`` wrote (and that are unchanged since)
are ever deleted, by ``overwrite`` or by pruning.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from deeplabv1.errors import DeepLabError
from deeplabv1.io import SET_ASIDE, TEMP_NAME, is_ours, temporary_prefix, write_error
from deeplabv1.train import state as st
from deeplabv1.train.config import TrainConfig

__all__ = ["EarlierRun", "continues", "put_back_set_aside", "replaceable", "start_over"]


def replaceable(out_dir: Path, resume_auto: bool = False) -> list[Path]:
    """Files in ``out_dir`` (and its end-to-end stage's ``crf/``) that a run may replace or
    prune (which must be train's own). With ``resume_auto``, not the checkpoints deeplabv1
    did not write (or that changed since) that do not load: ``--resume auto`` passes over
    them and keeps them."""
    found = []
    for folder in (out_dir, out_dir / "crf"):
        found += [folder / name for name in ("config.yaml", "log.jsonl", st.FINAL_NAME)]
        found += [path for _, path in st.list_checkpoints(folder)]
    if resume_auto:
        found = [p for p in found if not (st.is_checkpoint_name(p.name) and p.is_file()
                                          and not is_ours(p) and st.is_unreadable(p))]  # fmt: skip
    return found


def continues(cfg: TrainConfig, out_dir: Path) -> bool:
    """Whether ``cfg.resume`` continues the run in ``out_dir`` (``auto``, or one of its
    checkpoints)."""
    if cfg.resume is None or cfg.resume == "auto":
        return cfg.resume == "auto"
    return Path(cfg.resume).resolve().parent in (out_dir.resolve(), (out_dir / "crf").resolve())


def start_over(cfg: TrainConfig, out_dir: Path) -> EarlierRun | None:
    """A fresh run into a folder holding an earlier run: refused, or with ``overwrite`` that
    run (``EarlierRun``), which makes way for this one once its inputs are checked."""
    if continues(cfg, out_dir):
        return None
    earlier = [p for p in replaceable(out_dir) if p.is_file() and p.name != "config.yaml"]
    earlier = [p for p in earlier if p.name != "log.jsonl" or p.stat().st_size]  # a logged run
    if not earlier:
        return None
    if not cfg.overwrite:
        raise DeepLabError(f"--out-dir {out_dir}: holds an earlier training run "
                           f"({_shown(earlier, out_dir)}); pass --resume auto to continue it, "
                           "--overwrite to start over (deleting the checkpoints train wrote "
                           "there), or choose another folder")  # fmt: skip
    return EarlierRun(out_dir)


class EarlierRun:
    """The earlier run in ``out_dir`` that an ``overwrite`` run replaces, and how it makes way.

    Nothing of it is touched while the new run checks its settings, ``init`` weights, dataset
    and network. Right before the new run first writes (its ``config.yaml`` and log),
    ``set_aside`` moves the earlier run's ``config.yaml`` and ``log.jsonl`` (which the new run
    replaces), and the checkpoints and ``crf/log.jsonl`` that ``train`` wrote, into a temporary
    folder in ``out_dir``, where pruning and ``resume: auto`` never look; checkpoint-named
    files deeplabv1 did not write stay (named on stderr). Right before the new run writes its
    first checkpoint, ``discard`` deletes them; should the new run stop before that (an error,
    Ctrl-C, SIGTERM or SIGHUP: see ``cli.train``), ``restore`` puts them back as they were, in
    place of the new run's config.yaml and log. A run killed outright (``kill -9``, a power cut)
    leaves the temporary folder (``.earlier-run.<pid>-<host>-<random>.tmp``), which no command
    deletes (``deeplabv1.io`` passes over it): the next ``train`` into ``out_dir`` puts it back
    first (``put_back_set_aside``). So that such a folder always holds the whole earlier run,
    ``discard`` renames it (``.discarded-run...tmp``, deleted like any temporary of a dead
    process) before deleting it.
    """

    LOGS = ("config.yaml", "log.jsonl", "crf/log.jsonl")  # a new run writes them, checkpoints later

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.aside: Path | None = None  # the temporary folder while the files are set aside
        self.absent: list[Path] = []  # where a config.yaml or log is this run's, once set aside
        self.complete = False

    def _aside_path(self, path: Path) -> Path:
        return self.aside / path.relative_to(self.out_dir)

    def set_aside(self) -> None:
        """Move the earlier run's files out of this run's way (see the class doc); once."""
        if self.complete:
            return
        logs = [self.out_dir / name for name in self.LOGS]
        self.absent = [path for path in logs if not os.path.lexists(path)]
        logs = [p for p in logs if p.is_file() and (p.parent == self.out_dir or is_ours(p))]
        ours, kept = [], []
        for path in replaceable(self.out_dir):
            if st.is_checkpoint_name(path.name) and path.is_file():
                (ours if is_ours(path) else kept).append(path)
        if kept:
            print(f"deeplabv1 train: note: kept {_shown(kept, self.out_dir)} in {self.out_dir} "
                  "(not written by deeplabv1, so not deleted; this run replaces a file of the "
                  "same name when it writes one)", file=sys.stderr)  # fmt: skip
        try:
            self.aside = Path(tempfile.mkdtemp(prefix=temporary_prefix("earlier-run"),
                                               suffix=".tmp", dir=self.out_dir))  # fmt: skip
        except OSError as exc:
            raise write_error(self.out_dir, exc) from exc
        for path in logs + ours:
            try:
                self._aside_path(path).parent.mkdir(exist_ok=True)
                os.rename(path, self._aside_path(path))
            except OSError as exc:
                self.restore()
                raise write_error(path, exc) from exc
        self.absent += logs  # from now on, a file there is this run's
        self.complete = True

    def discard(self) -> None:
        """Delete the files set aside (right before this run writes its first checkpoint): the
        folder is renamed first, in one step, so that a folder named ``.earlier-run...`` is
        always the whole earlier run (see the class doc)."""
        if self.aside is None:
            return
        gone = self.aside.with_name(self.aside.name.replace(SET_ASIDE, ".discarded-run.", 1))
        try:
            os.rename(self.aside, gone)
        except OSError as exc:  # this run stops; the earlier run is put back (restore)
            raise write_error(self.aside, exc) from exc
        self.aside = None
        shutil.rmtree(gone, ignore_errors=True)

    def restore(self) -> None:
        """Put the files set aside back where they were, in place of the config.yaml and logs
        this run wrote (it stopped before writing a checkpoint)."""
        if self.aside is None or not self.aside.is_dir():  # (stopped while discarding it)
            self.aside = None
            return
        for path in self.absent if self.complete else ():  # this run's own, if any
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        failed = _put_back(self.aside, self.out_dir)
        if failed:  # left where they are, for the user (or the next train) to move back
            print(f"deeplabv1 train: note: could not put back {_shown(failed, self.out_dir)}: "
                  f"the earlier run's files are in {self.aside} (move them back, or the next "
                  "`train` into the folder puts them back)", file=sys.stderr)  # fmt: skip
        else:
            shutil.rmtree(self.aside, ignore_errors=True)
            print(f"deeplabv1 train: note: {self.out_dir}: the earlier run is back as it was "
                  "(this run stopped before writing a checkpoint)", file=sys.stderr)  # fmt: skip
        self.aside = None


def _put_back(aside: Path, out_dir: Path) -> list[Path]:
    """Move every file of the set-aside folder ``aside`` back to its place in ``out_dir``,
    replacing what is there; returns the places it could not move them to."""
    failed = []
    for dirpath, _, names in os.walk(aside):
        for name in names:
            source = Path(dirpath) / name
            path = out_dir / source.relative_to(aside)
            try:
                path.parent.mkdir(exist_ok=True)
                os.replace(source, path)
            except OSError:
                failed.append(path)
    return failed


def put_back_set_aside(out_dir: Path) -> None:
    """Put back the earlier run that a ``train --overwrite`` killed outright (``kill -9``, a
    power cut) left set aside in ``out_dir`` (``EarlierRun``), in place of the config.yaml and
    logs that run wrote, saying so on stderr. Called by ``train`` holding the folder's lock
    (so the run that set it aside has ended) before anything else is done there."""
    try:
        found = [e for e in os.scandir(out_dir) if e.name.startswith(SET_ASIDE)
                 and TEMP_NAME.match(e.name) and e.is_dir(follow_symlinks=False)]  # fmt: skip
    except OSError:
        return
    for entry in sorted(found, key=lambda e: e.stat(follow_symlinks=False).st_mtime):
        aside = Path(entry.path)
        failed = _put_back(aside, out_dir)
        if failed:
            raise DeepLabError(f"{aside}: holds an earlier run that a killed `train --overwrite` "
                               f"set aside; could not put back {_shown(failed, out_dir)} (move "
                               "the files in it back into the folder)")  # fmt: skip
        shutil.rmtree(aside, ignore_errors=True)
        print(f"deeplabv1 train: note: {out_dir}: put back the earlier run that a killed "
              f"`train --overwrite` had set aside ({entry.name}; it stopped before writing a "
              "checkpoint)", file=sys.stderr)  # fmt: skip


def _shown(paths: list[Path], folder: Path) -> str:
    """The first three of ``paths``, relative to ``folder``, and how many more."""
    shown = ", ".join(str(p.relative_to(folder)) for p in paths[:3])
    return shown + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
