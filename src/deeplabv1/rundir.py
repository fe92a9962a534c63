"""A command's output folder: used by one run at a time, cleaned of stale temporaries, guarded.

``run_directory(path, ...)`` is how every command that owns an output folder (``train
--out-dir``, ``predict -o``, ``crf --out-dir``, ``eval -o``, ``crf-search -o``, ``data
synth|prepare|download``) starts:

1. the folder must not be one of the command's input folders, nor an existing file (and, for a
   command that asks, it must be new, empty or one it wrote before);
2. it is created and locked: ``.deeplabv1.lock`` in it is held with an operating-system lock
   (``fcntl.flock``; ``msvcrt.locking`` on Windows) for the whole run. A second run gets a
   DeepLabError naming the holder (process id, host, command, start time). The lock dies with
   its process, so the lock file of a killed run is stale and simply taken over (processes the
   run forked, such as DataLoader workers, close their copy of the lock at once: a folder is
   free as soon as the run's own process has ended);
3. temporaries of atomic writes whose writer died are deleted from the folder itself (the
   subfolders a command writes are cleaned when it first writes there: ``deeplabv1.io``);
4. the command's ``deeplabv1.io.output_rules`` (inputs, ``overwrite``, the command's name)
   apply to every write.

A run that fails before writing anything into a folder it created removes that folder again;
in a folder that existed, it removes the lock file it made there (while still holding it: a run
that opened the file just before takes the folder's new lock file instead, ``RunLock.acquire``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from deeplabv1.errors import DeepLabError
from deeplabv1.io import (
    OUTPUTS_LIST,
    clean_folder,
    folder_written_by,
    is_stale_temporary,
    make_folder,
    output_rules,
    write_error,
)

LOCK_NAME = ".deeplabv1.lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _holder(path: Path) -> str | None:
    """Who holds the lock, as written into the lock file, in words; None when it is this very
    process."""
    try:
        info = json.loads(path.read_text())
        if info["pid"] == os.getpid() and info["host"] == socket.gethostname():
            return None
        return (f"pid {info['pid']} on {info['host']}, `{info['command']}`, since "
                f"{info['started']}")  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def _is_file_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path`` (not removed or replaced)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


_HELD: set[int] = set()  # descriptors of the locks this process holds


def _drop_held_in_child() -> None:
    """In a forked child (a DataLoader worker, a process pool's worker), close the inherited
    lock descriptors: a flock belongs to every process holding a descriptor of it, so a child
    outliving a killed run would keep its folder locked. Closing (never unlocking) leaves the
    parent's lock as it is."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_held_in_child)


class RunLock:
    """An exclusive lock on a folder (see the module doc); ``release()`` or process exit frees
    it."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise DeepLabError naming the run that holds it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise write_error(self.folder, exc) from exc
            if not _try_lock(fd):
                os.close(fd)
                holder = _holder(self.path)
                if holder is None:
                    raise DeepLabError(f"{self.folder}: already used by this very command for "
                                       "another of its folders: give it different folders")
                raise DeepLabError(
                    f"{self.folder}: in use by another deeplabv1 run ({holder}); wait for it to "
                    "finish or choose another output folder"
                )
            # a refused run removes the lock file it made while holding it: one who opened that
            # file before then holds a lock on a removed file, and takes the folder's anew
            if _is_file_at(fd, self.path):
                break
            os.close(fd)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(["deeplabv1", *sys.argv[1:]])[:300],
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with contextlib.suppress(OSError):  # the lock holds even if the note cannot be written
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(info) + "\n").encode())
        self._fd = fd
        _HELD.add(fd)
        return self

    def release(self) -> None:
        """Free the lock (the lock file stays: it is only removed, while held, by a run that
        made it and then failed before writing anything)."""
        if self._fd is not None:
            _HELD.discard(self._fd)
            os.close(self._fd)  # closing the descriptor releases flock / msvcrt locks
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


Folders = str | os.PathLike | Iterable[str | os.PathLike] | None


def _folders(value: Folders) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [Path(value)]
    return [Path(v) for v in value]


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (existing or not) lies somewhere under ``folder``."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def check_not_input_folder(path: Path, input_folders: dict[str, Folders], flag: str) -> None:
    """Refuse an output folder ``path`` that is one of ``input_folders`` (``{flag: folder or
    folders}``; the same folder under any name) or lies inside one that holds inputs itself:
    of the folders given for one flag, those that hold others of them (a dataset's root, the
    folders between it and its image, label and split-list folders) are refused as such only,
    their other subfolders being free."""
    for name, value in input_folders.items():
        folders = _folders(value)
        kind = f"the {name} folder" if isinstance(value, (str, os.PathLike)) else (
            f"a folder of the {name} inputs")  # fmt: skip
        for folder in folders:
            if path.exists() and _same_folder(path, folder):
                raise DeepLabError(f"{flag} {path} is {kind}: outputs would mix with the "
                                   "inputs; choose another output folder")  # fmt: skip
            holds_others = any(other != folder and _inside(other, folder) for other in folders)
            if not holds_others and _inside(path, folder):
                raise DeepLabError(f"{flag} {path} is inside {kind} ({folder}): outputs would "
                                   "mix with the inputs; choose another output folder")  # fmt: skip


def _check_new_or_own(path: Path, command: str | None, flag: str) -> None:
    """A folder that holds anything but another run's lock of this command is refused unless
    ``deeplabv1 COMMAND`` wrote into it before."""
    try:
        names = {p.name for p in path.iterdir() if not is_stale_temporary(p.name)}
        names -= {LOCK_NAME, OUTPUTS_LIST}
    except OSError:
        return  # not a folder, or unreadable: make_folder and the lock say why
    if names and not (command and folder_written_by(path, command)):
        shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
        raise DeepLabError(f"{flag} {path}: holds files that `deeplabv1 {command}` did not write "
                           f"({shown}); choose a new or empty folder")  # fmt: skip


@contextlib.contextmanager
def run_directory(
    path: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike | None] = (),
    input_folders: dict[str, Folders] | None = None,
    overwrite: bool = False,
    flag: str = "the output folder",
    command: str | None = None,
    new_or_own: bool = False,
) -> Iterator[Path]:
    """Create, lock and guard an output folder for one run (see the module doc).

    ``inputs``: files the command reads (never written, not even with ``overwrite``);
    ``input_folders``: ``{flag: folder or folders}`` the output folder must differ from;
    ``command``: the command's name (``"eval"``, ``"data synth"``), recorded with its outputs;
    ``new_or_own``: refuse an existing, non-empty folder this command did not write into.
    """
    path = Path(path)
    check_not_input_folder(path, input_folders or {}, flag)
    if new_or_own:
        _check_new_or_own(path, command, flag)
    created = not os.path.lexists(path)
    make_folder(path)
    before = None if os.path.lexists(path / LOCK_NAME) else _contents(path)
    lock = RunLock(path).acquire()
    try:
        with output_rules(inputs, overwrite, command):
            clean_folder(path, again=True)
            yield path
    except BaseException:
        # a run that failed before writing anything leaves no folder and no lock file behind
        if created:
            _remove_if_unused(path)
        elif before is not None:
            _remove_lock_if_unused(path, before)
        raise
    finally:
        lock.release()


@contextlib.contextmanager
def group_run_directory(path: str | os.PathLike, *, rank: int, **kwargs) -> Iterator[Path]:
    """``run_directory`` for a command that ``torchrun`` may start as several processes.

    Rank 0 creates, locks and cleans the folder for the whole group; the other ranks write
    their per-item outputs into it under the same output rules without taking the lock (they
    join the process group only after rank 0, so the folder exists by then).
    """
    if rank == 0:
        with run_directory(path, **kwargs) as folder:
            yield folder
        return
    with output_rules(kwargs.get("inputs", ()), kwargs.get("overwrite", False),
                      kwargs.get("command")):  # fmt: skip
        yield Path(path)


def _contents(path: Path) -> tuple[set[str], int]:
    """(the names in folder ``path``, the size of its outputs list or -1 when it has none)."""
    try:
        names = {p.name for p in path.iterdir()}
    except OSError:
        names = set()
    try:
        return names, (path / OUTPUTS_LIST).stat().st_size
    except OSError:
        return names, -1


def _remove_lock_if_unused(path: Path, before: tuple[set[str], int]) -> None:
    """Delete the lock file this run made in the existing folder ``path`` if the run wrote
    nothing there (no new name, its outputs list as it was)."""
    names, listed = _contents(path)
    if names - {LOCK_NAME} <= before[0] and listed == before[1]:
        with contextlib.suppress(OSError):
            (path / LOCK_NAME).unlink()


def _remove_if_unused(path: Path) -> None:
    """Delete ``path`` (which this run created) if it holds only the lock and the list."""
    with contextlib.suppress(OSError):
        if {p.name for p in path.iterdir()} <= {LOCK_NAME, OUTPUTS_LIST}:
            for name in (OUTPUTS_LIST, LOCK_NAME):
                (path / name).unlink(missing_ok=True)
            path.rmdir()
