"""Safe extraction of tar archives (.tar, .tgz, .tar.gz): nothing may land outside the target.

Every member is checked before anything is written, on every supported Python (tarfile's
``data`` filter, used in addition where it exists, is missing before 3.10.12 / 3.11.4). The
check replays the extraction on a model of the tree: each member's path is resolved through the
symbolic links that the members before it created (chains like ``a -> .``, ``a/b -> ..``
included), exactly as the operating system will resolve it. Refused, with an error naming the
archive and the member: absolute names, ``..`` components, paths or links that resolve outside
the destination, hard links to anything but a file extracted before, a link replacing an
earlier member, devices and FIFOs; and, once all members are known, any symbolic link that
resolves outside.

Extraction goes to a temporary folder beside the destination (named like the temporaries of
``deeplabv1.io``, so that the leftovers of a killed extraction are cleaned the same way) and is
then moved into place.
Moving never deletes a folder: a folder is merged into an existing folder; a file whose path
already holds the same bytes is replaced by its equal; any other clash (a file of other contents
without ``overwrite``, a folder where the archive has a file or the reverse) is an error naming
the path, found before anything is moved.
"""

from __future__ import annotations

import filecmp
import lzma
import os
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from deeplabv1.errors import DeepLabError
from deeplabv1.io import temporary_prefix

_MAX_LINK_STEPS = 40  # as the kernel's ELOOP limit

Parts = tuple[str, ...]


class _Tree:
    """The archive's tree as extraction builds it: folders, files and symbolic links."""

    def __init__(self) -> None:
        self.kinds: dict[Parts, str] = {(): "dir"}  # "dir", "file" or "link"
        self.links: dict[Parts, str] = {}

    def resolve(self, parts: Parts, follow_last: bool = True) -> Parts | None:
        """``parts`` (relative to the root) with every link made so far followed, normalised;
        None when it leaves the root (or loops)."""
        todo, done, steps = list(parts), [], 0
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not done:
                    return None
                done.pop()
                continue
            target = self.links.get((*done, part))
            if target is not None and (todo or follow_last):
                steps += 1
                link = PurePosixPath(target)
                if steps > _MAX_LINK_STEPS or link.is_absolute():
                    return None
                todo = list(link.parts) + todo  # relative to the link's folder (= done)
                continue
            done.append(part)
        return tuple(done)


def _problem(tree: _Tree, m: tarfile.TarInfo) -> str | None:
    """Why member ``m`` would write outside the root, given the members before it (None: safe);
    records what it creates."""
    name = PurePosixPath(m.name)
    if name.is_absolute() or m.name.startswith(("/", "\\")) or ".." in name.parts:
        return "an absolute path or '..' in its name"
    if m.isdev() or m.isfifo():
        return "a device or FIFO"
    if not name.parts:
        return None
    parent = tree.resolve(name.parts[:-1])
    if parent is None:
        return "a path outside the destination (through a symbolic link)"
    for i in range(1, len(parent) + 1):  # folders tarfile creates on the way
        tree.kinds.setdefault(parent[:i], "dir")
    path = (*parent, name.parts[-1])
    if m.issym() or m.islnk():
        if path in tree.kinds:
            return "a link replacing an earlier member"
        link = PurePosixPath(m.linkname)
        if link.is_absolute():
            return f"a link to the absolute path {m.linkname!r}"
        if m.issym():
            if tree.resolve((*parent, *link.parts)) is None:
                return f"a symbolic link to {m.linkname!r} outside the destination"
            tree.kinds[path], tree.links[path] = "link", m.linkname
            return None
        target = tree.resolve(link.parts)  # hard link names are relative to the archive root
        if target is None or tree.kinds.get(target) != "file":
            return f"a hard link to {m.linkname!r}, not a file extracted before it"
        tree.kinds[path] = "file"
        return None
    final = tree.resolve(path)  # a file or folder written through an existing link
    if final is None:
        return "a path outside the destination (through a symbolic link)"
    tree.kinds.setdefault(final, "dir" if m.isdir() else "file")
    return None


def check_members(archive: Path, members: list[tarfile.TarInfo], dest: Path) -> None:
    """Raise DeepLabError naming the first member that would write outside ``dest`` (see the
    module doc); ``dest`` is only named in messages."""
    tree = _Tree()
    for m in members:
        bad = _problem(tree, m)
        if bad:
            raise DeepLabError(f"{archive}: refusing member {m.name!r}: {bad}")
    for path, target in tree.links.items():  # links made later may redirect earlier ones
        if tree.resolve(path) is None:
            raise DeepLabError(f"{archive}: refusing member {'/'.join(path)!r}: a symbolic link "
                               f"to {target!r} that resolves outside {dest}")  # fmt: skip


def _clashes(src: Path, dst: Path, overwrite: bool = False) -> list[str]:
    """What moving ``src`` onto ``dst`` would destroy (nothing: an empty list); with
    ``overwrite`` a file of other contents may be replaced by a file or link."""
    if not os.path.lexists(dst):
        return []
    if src.is_dir() and not src.is_symlink():
        if not dst.is_dir():
            return [f"{dst} is a file where the archive has a folder"]
        return [c for child in src.iterdir() for c in _clashes(child, dst / child.name, overwrite)]
    if dst.is_dir():
        return [f"{dst} is a folder where the archive has a file or link"]
    if src.is_symlink() or dst.is_symlink():
        same = src.is_symlink() and dst.is_symlink() and os.readlink(src) == os.readlink(dst)
    else:
        same = filecmp.cmp(src, dst, shallow=False)
    return [] if same or overwrite else [f"{dst} exists with other contents (--overwrite)"]


def _move_tree(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst`` (checked by ``_clashes``): merge folders, replace files."""
    if src.is_dir() and not src.is_symlink() and os.path.lexists(dst):
        for child in src.iterdir():
            _move_tree(child, dst / child.name)
        src.rmdir()
    else:  # a new path, or a file (of the same or, with overwrite, other contents)
        os.replace(src, dst)


def extract_archive(
    archive: str | os.PathLike, dest: str | os.PathLike, overwrite: bool = False
) -> list[str]:
    """Extract a tar archive into ``dest`` safely; returns the top-level names it holds.

    Existing files of other contents are replaced only with ``overwrite`` (see the module doc).
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise DeepLabError(f"{archive}: not a readable tar archive ({exc})") from exc
    with tar, tempfile.TemporaryDirectory(prefix=temporary_prefix("extract"), suffix=".tmp",
                                          dir=dest) as tmp:  # fmt: skip
        try:
            members = tar.getmembers()
            check_members(archive, members, dest)
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **kwargs)  # members checked above
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise DeepLabError(f"{archive}: extraction failed ({exc})") from exc
        tops = sorted(p.name for p in Path(tmp).iterdir())
        clashes = [c for name in tops for c in _clashes(Path(tmp) / name, dest / name, overwrite)]
        if clashes:
            more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
            raise DeepLabError(f"{archive}: not extracted, {clashes[0]}{more}; nothing was "
                               "changed: move it away and run again")  # fmt: skip
        for name in tops:
            _move_tree(Path(tmp) / name, dest / name)
    return tops
