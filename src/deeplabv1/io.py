"""Safe file output: atomic writes, the list of files deeplabv1 wrote, and each command's rules.

- Atomic: an output is written to a temporary file beside it and renamed into place; a crash
  leaves the previous file (or none), never a truncated one. The temporary's name says who
  writes it: ``.<name>.<pid>-<host tag>-<8 random characters>.tmp``. ``atomic_paths`` writes
  several outputs of one item and renames them only once all of them are complete, so a
  failure leaves none of them.
- Stale temporaries: before a process first writes into a folder, it deletes the temporaries
  there (that folder only, never its subfolders) whose writer was a process of this host that
  is no longer running. A live writer's temporary, another host's, or any file not named like
  one, is never touched.
- Recorded: just before the rename, the file's name, size, modification time (and inode) and
  the writing command are appended to ``.deeplabv1-outputs`` in its folder. A file is "ours"
  when it still has a recorded size and modification time (written by deeplabv1 and unchanged
  since); a file that deeplabv1 goes on appending to (a training log) is ours while it is the
  same file (inode).
- Guarded: while a command's ``output_rules`` are active, a write to one of its inputs (the same
  path, a symbolic or a hard link to it) is refused; so is a write over an existing file that
  is not ours, unless ``overwrite`` is set, and over a file another command wrote or anything
  but a regular file (a device, a FIFO, a socket, a folder), even with ``overwrite``. All are
  refused before anything is written.
- Errors: an OSError while writing (disk full, read-only file system, no permission) becomes a
  ``DeepLabError`` naming the file; the previous file is intact.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from deeplabv1.errors import DeepLabError

OUTPUTS_LIST = ".deeplabv1-outputs"
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
# .<name>.<pid>-<host tag>-<tempfile's 8 random characters>.tmp (see temporary_prefix)
TEMP_NAME = re.compile(r"^\..+\.(\d+)-([0-9a-f]{8})-[a-z0-9_]{8}\.tmp$")
SET_ASIDE = ".earlier-run."  # an earlier run that `train --overwrite` set aside (temporary_prefix)
_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "over the disk quota",
    errno.EFBIG: "over the file size limit",
    errno.EROFS: "choose a writable output folder",
    errno.EACCES: "choose a folder you may write to",
    errno.EPERM: "choose a folder you may write to",
}


_TEMPORARIES: dict[str, Path] = {}  # temporaries of atomic writes in progress -> their output


def write_error(path: str | os.PathLike, exc: OSError) -> DeepLabError:
    """A DeepLabError for a failed write: the path, the system's reason and what it means (a
    temporary of an atomic write in progress is named by the output it is for)."""
    path = _TEMPORARIES.get(os.fspath(path), path)
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


# --- temporaries of atomic writes, and deleting those of writers that died ---------------------


def temporary_prefix(name: str) -> str:
    """The start of the name of a temporary for ``name`` written by this process (``mkstemp``
    and ``TemporaryDirectory`` add the random part; the suffix is ``.tmp``)."""
    return f".{name}.{os.getpid()}-{HOST_TAG}-"


def _running(pid: int) -> bool:
    if os.name != "posix":  # no safe liveness test without extra packages: keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True


def is_stale_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary of an atomic write whose writer, a process of this
    host, has ended."""
    match = TEMP_NAME.match(name)
    if match is None or match[2] != HOST_TAG:
        return False
    pid = int(match[1])
    return pid != os.getpid() and not _running(pid)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the stale temporaries (``is_stale_temporary``) in ``folder`` itself, files or
    (an interrupted extraction's) folders; subfolders are not searched. Returns what went.
    Never an earlier run set aside by ``train --overwrite`` (``SET_ASIDE``), which ``train``
    puts back (``train.run_folder``)."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not is_stale_temporary(entry.name) or entry.name.startswith(SET_ASIDE):
            continue  # an earlier run that a killed `train --overwrite` set aside: train's
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


_CLEANED: set[str] = set()  # folders this process has cleaned of stale temporaries


def clean_folder(folder: str | os.PathLike, *, again: bool = False) -> None:
    """``remove_stale_temporaries(folder)`` once per process (or ``again``)."""
    key = os.path.realpath(folder)
    if again or key not in _CLEANED:
        _CLEANED.add(key)
        remove_stale_temporaries(key)


# --- the list of files deeplabv1 wrote, per folder ---------------------------------------------


@dataclass(frozen=True)
class Written:
    """One record of ``.deeplabv1-outputs``: a file deeplabv1 wrote and by which command
    (None: the Python API, outside any command); ``size`` None for a file it appends to."""

    inode: int
    size: int | None
    mtime_ns: int | None
    command: str | None

    def matches(self, st: os.stat_result) -> bool:
        """Whether the file ``st`` describes is still as written: the same size and modification
        time (a copy that keeps times, ``cp -a``, is still ours); for a file deeplabv1 appends
        to, the same file (inode)."""
        if self.size is None:
            return st.st_ino == self.inode
        return (st.st_size, st.st_mtime_ns) == (self.size, self.mtime_ns)


_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}


def _escape(name: str) -> str:
    return re.sub(r"[\\\t\n\r]", lambda m: _ESCAPES[m[0]], name)


def _unescape(text: str) -> str:
    return re.sub(r"\\[\\tnr]", lambda m: _UNESCAPES[m[0]], text)


def _record_line(name: str, st: os.stat_result, grown: bool, command: str | None) -> str:
    size, mtime = ("-", "-") if grown else (st.st_size, st.st_mtime_ns)
    return f"{_escape(name)}\t{st.st_ino}\t{size}\t{mtime}\t{command or '-'}\n"


def _parse_line(line: str) -> tuple[str, Written] | None:
    """A record line (name, inode, size, mtime, command tab-separated), or None for anything
    else (lists of older versions named files only: such names are no longer vouched for)."""
    parts = line.split("\t")
    if len(parts) != 5:
        return None
    name, inode, size, mtime, command = parts
    try:
        grown = size == "-"
        written = Written(int(inode), None if grown else int(size), None if grown else int(mtime),
                          None if command == "-" else command)  # fmt: skip
    except ValueError:
        return None
    return _unescape(name), written


@dataclass
class _Listing:
    """A folder's records, read incrementally (the list file only ever grows)."""

    ident: tuple[int, int]
    offset: int = 0
    records: dict[str, list[Written]] = field(default_factory=dict)


_LISTINGS: dict[str, _Listing] = {}


def _records(folder: str | os.PathLike) -> dict[str, list[Written]]:
    """``{name: records}`` of ``folder/.deeplabv1-outputs`` (new lines are read as they come)."""
    key = os.path.realpath(folder)
    try:
        with open(os.path.join(key, OUTPUTS_LIST), "rb") as f:
            st = os.fstat(f.fileno())
            listing = _LISTINGS.get(key)
            if listing is None or listing.ident != (st.st_dev, st.st_ino) or (
                st.st_size < listing.offset):  # fmt: skip
                listing = _LISTINGS[key] = _Listing((st.st_dev, st.st_ino))
            if st.st_size > listing.offset:
                f.seek(listing.offset)
                data = f.read()
                end = data.rfind(b"\n") + 1  # complete lines only: a writer may be mid-line
                for line in data[:end].decode("utf-8", "surrogateescape").splitlines():
                    parsed = _parse_line(line)
                    if parsed is not None:
                        listing.records.setdefault(parsed[0], []).append(parsed[1])
                listing.offset += end
    except OSError:
        return {}
    return listing.records


def written_by(path: str | os.PathLike) -> Written | None:
    """The record of ``path`` if deeplabv1 wrote it and it is unchanged since, else None."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    for record in reversed(_records(path.parent).get(path.name, ())):
        if record.matches(st):
            return record
    return None


def is_ours(path: str | os.PathLike) -> bool:
    """Whether deeplabv1 wrote ``path`` and it is unchanged since (see ``written_by``)."""
    return written_by(path) is not None


def folder_written_by(folder: str | os.PathLike, command: str) -> bool:
    """Whether ``folder`` holds a file that ``deeplabv1 COMMAND`` wrote (and is unchanged)."""
    folder = Path(folder)
    records = (written_by(folder / name) for name in list(_records(folder)))
    return any(record is not None and record.command == command for record in records)


def _append_records(items: Iterable[tuple[Path, os.stat_result]], grown: bool) -> None:
    rules = _RULES.get()
    command = rules.command if rules is not None else None
    by_folder: dict[Path, list[str]] = {}
    for path, st in items:
        by_folder.setdefault(path.parent, []).append(_record_line(path.name, st, grown, command))
    for folder, lines in by_folder.items():
        listing = folder / OUTPUTS_LIST
        try:
            with open(listing, "a", encoding="utf-8", errors="surrogateescape") as f:
                f.write("".join(lines))  # one write: records of concurrent writers do not mix
        except OSError as exc:
            raise write_error(listing, exc) from exc


def record_outputs(paths: Iterable[str | os.PathLike], *, grown: bool = False) -> None:
    """Record the existing files ``paths`` as written by deeplabv1 (the active command's);
    ``grown``: files that deeplabv1 goes on appending to (ours while they are the same file)."""
    items = []
    for p in map(Path, paths):
        try:
            items.append((p, os.stat(p)))
        except OSError as exc:
            raise write_error(p, exc) from exc
    _append_records(items, grown)


# --- a command's rules for its outputs -----------------------------------------------------------


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISCHR: "character device", stat.S_ISBLK: "block device",
             stat.S_ISFIFO: "named pipe (FIFO)", stat.S_ISSOCK: "socket"}  # fmt: skip
    return next((name for test, name in kinds.items() if test(mode)), "special file")


@dataclass(frozen=True)
class OutputRules:
    """What one command may write: never its ``inputs``; over files not ours only with
    ``overwrite``; never over another command's outputs."""

    input_paths: frozenset[str]
    input_files: frozenset[tuple[int, int]]
    overwrite: bool = False
    command: str | None = None

    @classmethod
    def build(
        cls,
        inputs: Iterable[str | os.PathLike | None],
        overwrite: bool = False,
        command: str | None = None,
    ) -> OutputRules:
        """Rules protecting ``inputs`` (files; None entries are ignored) for ``deeplabv1
        COMMAND`` (recorded with every output; None: not a command)."""
        paths, files = set(), set()
        for item in inputs:
            if item is None:
                continue
            paths.add(os.path.realpath(item))
            with contextlib.suppress(OSError):
                st = os.stat(item)
                files.add((st.st_dev, st.st_ino))
        return cls(frozenset(paths), frozenset(files), overwrite, command)

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
        if st is not None and not stat.S_ISREG(st.st_mode):
            return (f"{path}: is a {_file_kind(st.st_mode)}, not a regular file; refusing to "
                    "replace it (even with --overwrite): choose another output")  # fmt: skip
        if not os.path.lexists(path):
            return None
        record = written_by(path)
        if record is None:
            if self.overwrite:
                return None
            return (f"{path}: exists and was not written by deeplabv1 (or was changed since); "
                    "pass --overwrite to replace it, or choose another output")  # fmt: skip
        if None not in (record.command, self.command) and record.command != self.command:
            return (f"{path}: is an output of `deeplabv1 {record.command}`; refusing to replace "
                    "it (even with --overwrite): choose another output")  # fmt: skip
        return None


_RULES: contextvars.ContextVar[OutputRules | None] = contextvars.ContextVar(
    "deeplabv1_output_rules", default=None
)


@contextlib.contextmanager
def output_rules(
    inputs: Iterable[str | os.PathLike | None] = (),
    overwrite: bool = False,
    command: str | None = None,
) -> Iterator[OutputRules]:
    """Make every atomic write in this block follow ``OutputRules`` (see the module doc)."""
    rules = OutputRules.build(inputs, overwrite, command)
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
            clean_folder(path.parent)
            fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path.name), suffix=".tmp",
                                       dir=path.parent)  # fmt: skip
            os.close(fd)
            tmps.append(Path(tmp))
            _TEMPORARIES[tmp] = _TEMPORARIES.get(os.fspath(path), path)  # an outer one's output
            # mkstemp creates 0600 files; give outputs the usual permissions (0666 - umask)
            os.chmod(tmp, 0o666 & ~umask)
        current = finals[0] if len(finals) == 1 else finals[0].parent
        yield tmps
        written = []
        for tmp, path in zip(tmps, finals):
            current = path
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
                if not TEMP_NAME.match(path.name):
                    written.append((path, os.fstat(f.fileno())))  # a rename keeps all of it
        _append_records(written, grown=False)
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
    finally:
        for tmp in tmps:
            _TEMPORARIES.pop(os.fspath(tmp), None)


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


# --- .npy headers of untrusted files -------------------------------------------------------------


def check_npy_header(f: IO[bytes], available: int):
    """Shape and dtype that the .npy stream ``f`` (at its start, ``available`` bytes long)
    declares; ValueError when the header is malformed or declares more data
    than the stream holds (numpy would allocate the declared size before reading anything)."""
    import math

    import numpy as np

    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    if dtype.hasobject:  # np.load(allow_pickle=False) refuses it, in its own words
        return shape, dtype
    if any(d < 0 for d in shape):
        raise ValueError(f"the header declares a negative size, shape {shape}")
    need = math.prod(shape) * dtype.itemsize
    held = available - f.tell()
    if need > held:
        raise ValueError(f"the header declares shape {shape} of {dtype} ({need:,} bytes), "
                         f"the file holds {max(held, 0):,}")
    return shape, dtype


def regular_file(path: str | os.PathLike, what: str) -> os.stat_result:
    """``os.stat`` of ``path``, a DeepLabError unless it is a regular file (reading a FIFO
    waits for a writer forever; a device may never end)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DeepLabError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise DeepLabError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise DeepLabError(f"{path}: is a folder, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise DeepLabError(f"{path}: is a {_file_kind(st.st_mode)}, not a regular {what}")
    return st
