"""Safe extraction of tar archives (.tar, .tgz, .tar.gz): nothing may land outside the target.

Every member is checked before anything is written: absolute names, ``..`` components, links
whose target resolves outside the destination, and device/FIFO members are refused with an
error naming the archive and the member. Extraction goes to a temporary folder beside the
destination and is then moved into place, so an interrupted run leaves no half-extracted tree.
"""

from __future__ import annotations

import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from deeplabv1.errors import DeepLabError


def _inside(base: Path, target: Path) -> bool:
    base, target = os.path.realpath(base), os.path.realpath(target)
    return os.path.commonpath([base, target]) == base


def check_members(archive: Path, members: list[tarfile.TarInfo], dest: Path) -> None:
    """Raise DeepLabError naming the first member that would escape ``dest``."""
    for m in members:
        name = PurePosixPath(m.name)
        bad = None
        if name.is_absolute() or m.name.startswith(("/", "\\")) or ".." in name.parts:
            bad = "an absolute path or '..' in its name"
        elif m.isdev() or m.isfifo():
            bad = "a device or FIFO"
        elif not _inside(dest, dest / name):
            bad = "a path outside the destination"
        elif m.issym():
            link = PurePosixPath(m.linkname)
            if link.is_absolute() or not _inside(dest, dest / name.parent / link):
                bad = f"a symbolic link to {m.linkname!r} outside the destination"
        elif m.islnk():
            link = PurePosixPath(m.linkname)
            if link.is_absolute() or ".." in link.parts or not _inside(dest, dest / link):
                bad = f"a hard link to {m.linkname!r} outside the destination"
        if bad:
            raise DeepLabError(f"{archive}: refusing member {m.name!r}: {bad}")


def _move_tree(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``, merging into existing folders, replacing existing files."""
    if dst.is_dir() and src.is_dir() and not src.is_symlink():
        for child in src.iterdir():
            _move_tree(child, dst / child.name)
        src.rmdir()
    else:
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        os.replace(src, dst)


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Extract a tar archive into ``dest`` safely; returns the top-level names it holds."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise DeepLabError(f"{archive}: not a readable tar archive ({exc})") from exc
    with tar, tempfile.TemporaryDirectory(prefix=".extract-", dir=dest) as tmp:
        try:
            members = tar.getmembers()
            check_members(archive, members, dest)
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **kwargs)  # members checked above
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise DeepLabError(f"{archive}: extraction failed ({exc})") from exc
        tops = sorted(p.name for p in Path(tmp).iterdir())
        for name in tops:
            _move_tree(Path(tmp) / name, dest / name)
    return tops
