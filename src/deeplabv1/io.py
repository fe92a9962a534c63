"""Safe file output: atomic writes, the list of files deeplabv1 wrote, and each command's rules.

- Atomic: an output is written to a temporary file beside it (``.<name>.<8 characters>.tmp``)
  and renamed into place; a crash leaves the previous file (or none), never a truncated one.
  ``atomic_paths`` writes several outputs of one item and renames them only once all of them
  are complete, so a failure leaves none of them.
- Recorded: just before the rename, the file's name is appended to ``.deeplabv1-outputs`` in
  its folder. A file listed there is "ours": a later command may replace it.
- Guarded: while a command's ``output_rules`` are active, a write to one of its inputs (the same
  path, a symbolic or a hard link to it) is refused, and so is a write over an existing file
  that is not ours, unless ``overwrite`` is set. Both are refused before anything is written.
- Errors: an OSError while writing (disk full, read-only file system, no permission) becomes a
  ``DeepLabError`` naming the file; the previous file is intact.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from deeplabv1.errors import DeepLabError

OUTPUTS_LIST = ".deeplabv1-outputs"
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # tempfile.mkstemp(prefix=".<name>.", ...)
_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "over the disk quota",
    errno.EFBIG: "over the file size limit",
    errno.EROFS: "choose a writable output folder",
    errno.EACCES: "choose a folder you may write to",
    errno.EPERM: "choose a folder you may write to",
}


def write_error(path: str | os.PathLike, exc: OSError) -> DeepLabError:
    """A DeepLabError for a failed write: the path, the system's reason and what it means."""
    reason = exc.strerror or str(exc)
    hint = _HINTS.get(exc.errno)
    return DeepLabError(f"{path}: cannot write ({reason}{'; ' + hint if hint else ''})")


def make_folder(path: str | os.PathLike) -> Path:
    """``mkdir -p`` with a DeepLabError naming the folder when it cannot be created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DeepLabError(f"{path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from exc
    return path


# --- the list of files deeplabv1 wrote, per folder ---------------------------------------------

_LISTED: dict[str, tuple[tuple[int, int], set[str]]] = {}  # folder -> ((size, mtime), names)


def _listed_names(folder: Path) -> set[str]:
    """Names in ``folder/.deeplabv1-outputs`` (cached while the list file is unchanged)."""
    key = os.path.realpath(folder)
    try:
        st = os.stat(os.path.join(key, OUTPUTS_LIST))
    except OSError:
        return set()
    stamp = (st.st_size, st.st_mtime_ns)
    cached = _LISTED.get(key)
    if cached is None or cached[0] != stamp:
        try:
            text = Path(key, OUTPUTS_LIST).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
        cached = (stamp, {line for line in text.splitlines() if line})
        _LISTED[key] = cached
    return cached[1]


def is_ours(path: str | os.PathLike) -> bool:
    """Whether ``path`` is listed in its folder's ``.deeplabv1-outputs``."""
    path = Path(path)
    return path.name in _listed_names(path.parent)


def record_outputs(paths: Iterable[str | os.PathLike]) -> None:
    """Append the names of ``paths`` not yet listed to their folders' ``.deeplabv1-outputs``."""
    by_folder: dict[Path, list[str]] = {}
    for p in map(Path, paths):
        if p.name not in _listed_names(p.parent) and p.name not in by_folder.get(p.parent, []):
            by_folder.setdefault(p.parent, []).append(p.name)
    for folder, names in by_folder.items():
        listing = folder / OUTPUTS_LIST
        try:
            with open(listing, "a", encoding="utf-8") as f:
                f.write("".join(f"{n}\n" for n in names))
            st = os.stat(listing)
        except OSError as exc:
            raise write_error(listing, exc) from exc
        # keep the cache current without reading the list again (thousands of labels per folder)
        key = os.path.realpath(folder)
        known = _LISTED[key][1] if key in _LISTED else set()
        known.update(names)
        _LISTED[key] = ((st.st_size, st.st_mtime_ns), known)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes under ``folder`` (recursively).

    Only call this while no other process writes there (``deeplabv1.rundir`` holds the
    folder's lock). Returns what was removed.
    """
    removed = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        for name in files:
            if TEMP_NAME.match(name):
                path = Path(root, name)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


# --- a command's rules for its outputs -----------------------------------------------------------


@dataclass(frozen=True)
class OutputRules:
    """What one command may write: never its ``inputs``; over files not ours only with
    ``overwrite``."""

    input_paths: frozenset[str]
    input_files: frozenset[tuple[int, int]]
    overwrite: bool = False

    @classmethod
    def build(cls, inputs: Iterable[str | os.PathLike | None], overwrite: bool = False):
        """Rules protecting ``inputs`` (files; None entries are ignored)."""
        paths, files = set(), set()
        for item in inputs:
            if item is None:
                continue
            paths.add(os.path.realpath(item))
            with contextlib.suppress(OSError):
                st = os.stat(item)
                files.add((st.st_dev, st.st_ino))
        return cls(frozenset(paths), frozenset(files), overwrite)

    def problem(self, path: str | os.PathLike) -> str | None:
        """Why writing ``path`` is refused, or None when it is allowed."""
        path = Path(path)
        if os.path.realpath(path) in self.input_paths:
            return f"{path}: is one of this command's inputs; refusing to write over it"
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) in self.input_files:
            return f"{path}: is the same file as one of this command's inputs; refusing to write it"
        if os.path.isdir(path):
            return f"{path}: is a folder; refusing to replace it by a file"
        if os.path.lexists(path) and not self.overwrite and not is_ours(path):
            return (f"{path}: exists and was not written by deeplabv1; pass --overwrite to "
                    "replace it, or choose another output")  # fmt: skip
        return None


_RULES: contextvars.ContextVar[OutputRules | None] = contextvars.ContextVar(
    "deeplabv1_output_rules", default=None
)


@contextlib.contextmanager
def output_rules(
    inputs: Iterable[str | os.PathLike | None] = (), overwrite: bool = False
) -> Iterator[OutputRules]:
    """Make every atomic write in this block follow ``OutputRules`` (see the module doc)."""
    rules = OutputRules.build(inputs, overwrite)
    token = _RULES.set(rules)
    try:
        yield rules
    finally:
        _RULES.reset(token)


def check_outputs(paths: Iterable[str | os.PathLike]) -> None:
    """Raise one DeepLabError naming the outputs the active rules refuse (before any work)."""
    rules = _RULES.get()
    if rules is None:
        return
    problems = [msg for msg in map(rules.problem, paths) if msg]
    if len(problems) == 1:
        raise DeepLabError(problems[0])
    if problems:
        raise DeepLabError(f"{len(problems)} outputs refused; the first: {problems[0]}")


# --- atomic writes -------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield temporary paths beside ``paths``; once the block ends, rename them all into place.

    The caller writes the temporary paths with any library (torch.save, PIL, ...). On an
    exception every temporary file is removed and every ``path`` is untouched; an OSError (disk
    full, read-only) is raised as a DeepLabError naming the file.
    """
    finals = [Path(p) for p in paths]
    check_outputs(p for p in finals if not TEMP_NAME.match(p.name))  # not an outer temporary
    tmps: list[Path] = []
    current = finals[0] if finals else Path()
    try:
        umask = os.umask(0)
        os.umask(umask)
        for path in finals:
            current = path
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmps.append(Path(tmp))
            # mkstemp creates 0600 files; give outputs the usual permissions (0666 - umask)
            os.chmod(tmp, 0o666 & ~umask)
        current = finals[0] if len(finals) == 1 else finals[0].parent
        yield tmps
        for tmp, path in zip(tmps, finals):
            current = path
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        record_outputs(p for p in finals if not TEMP_NAME.match(p.name))
        for tmp, path in zip(tmps, finals):
            current = path
            os.replace(tmp, path)
    except BaseException as exc:
        for tmp in tmps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(exc, OSError):
            raise write_error(current, exc) from exc
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The caller writes the temporary path with any library (torch.save, PIL, ...).
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    with atomic_paths(path) as (tmp,):
        yield tmp


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(fileobj)`` on a binary temporary file, then rename it onto ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class _WriteErrors:
    """A binary file wrapper that keeps the OSError of a failed write: torch.save reports a
    full disk as a RuntimeError ("unexpected pos") that no longer says why."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` to ``path`` atomically."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        out = _WriteErrors(f)
        try:
            torch.save(obj, out)
        except RuntimeError as exc:
            if out.error is not None:
                raise out.error from exc
            raise
