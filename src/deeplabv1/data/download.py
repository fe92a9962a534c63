"""``deeplabv1 data download``: fetch the VOC2012 and SBD archives, verify, extract safely.

Official sources and md5 checksums (the same values torchvision's ``datasets/voc.py`` and
``datasets/sbd.py`` use): see docs/data.md. Downloads resume: the partial file is kept as
``<name>.part`` and continued with an HTTP Range request (or from the same offset for local
paths and ``file://`` URLs). Archives are extracted into a temporary folder beside the target
and moved into place; members that would land outside it (absolute paths, ``..``, links
pointing outside, devices) are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import urllib.parse
import urllib.request
from pathlib import Path

from deeplabv1.data.archive import extract_archive
from deeplabv1.errors import DeepLabError
from deeplabv1.io import atomic_write_text

CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Archive:
    """One dataset archive: file name, official URL, md5, and the folder it extracts to."""

    filename: str
    url: str
    md5: str
    extracts_to: str


ARCHIVES = {
    "voc2012": Archive(
        "VOCtrainval_11-May-2012.tar",
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "6cd6e144f989b92b3379bac3b3de84fd",
        "VOCdevkit/VOC2012",
    ),
    "sbd": Archive(
        "benchmark.tgz",
        "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
        "benchmark.tgz",
        "82b4d87ceb2ed10f6038a1cba92111cb",
        "benchmark_RELEASE/dataset",
    ),
}


def file_md5(path: Path) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _local_path(source: str) -> Path | None:
    if source.startswith("file://"):
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(source).path))
    if "://" not in source:
        return Path(source)
    return None


def _open_source(source: str, offset: int):
    """(readable stream positioned at ``offset`` or at 0, the position it is at, total or None)."""
    local = _local_path(source)
    if local is not None:
        if not local.is_file():
            raise DeepLabError(f"{local}: archive not found")
        f = open(local, "rb")  # noqa: SIM115 (closed by the caller)
        size = local.stat().st_size
        f.seek(min(offset, size))
        return f, min(offset, size), size
    req = urllib.request.Request(source, headers={"User-Agent": "deeplabv1"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left after offset: the .part is complete
            return None, offset, offset
        raise DeepLabError(f"{source}: download failed (HTTP {exc.code} {exc.reason})") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DeepLabError(f"{source}: download failed ({exc})") from exc
    length = resp.headers.get("Content-Length")
    if resp.status == 206:
        total = offset + int(length) if length else None
        return resp, offset, total
    # 200: the server ignored the Range header; start again from the beginning
    return resp, 0, int(length) if length else None


def fetch(source: str, dest: str | os.PathLike, md5: str | None, progress: bool = False) -> Path:
    """Download ``source`` (URL, file:// URL or local path) to ``dest``, resumably, verified.

    An existing ``dest`` with the right md5 is kept; the partial file is ``dest.part``.
    ``md5=None`` skips verification. A checksum mismatch is an error (the .part file is kept
    so that a wrong expected value costs no download; delete it to start again).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if dest.is_file():
        if md5 is None or file_md5(dest) == md5:
            return dest
        raise DeepLabError(f"{dest}: md5 {file_md5(dest)} differs from the expected {md5}; "
                           "delete the file to download it again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.is_file() else 0
    stream, start, total = _open_source(source, offset)
    if stream is not None:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=dest.name)
        with stream, open(part, "r+b" if part.exists() else "wb") as out:
            out.seek(start)
            out.truncate()
            while chunk := stream.read(CHUNK):
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        if bar is not None:
            bar.close()
    size = part.stat().st_size
    if total is not None and size != total:
        raise DeepLabError(f"{part}: got {size:,} of {total:,} bytes; run again to resume")
    if md5 is not None:
        got = file_md5(part)
        if got != md5:
            raise DeepLabError(
                f"{part}: md5 {got} differs from the expected {md5} (file kept; delete it to "
                "download again, or pass the right checksum)"
            )
    os.replace(part, dest)
    return dest


def download_datasets(
    root: str | os.PathLike,
    names: list[str] | tuple[str, ...] = ("voc2012", "sbd"),
    *,
    source: str | None = None,
    md5: dict[str, str | None] | None = None,
    extract: bool = True,
    progress: bool = False,
    archives: dict[str, Archive] | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Fetch (and extract) the named archives into ``root``; returns name -> dataset folder.

    ``source``: a mirror, as a base URL or a local folder holding the archives under their
    official file names (default: the official URLs). ``md5`` overrides the expected checksums
    per name (None: do not verify). ``archives`` replaces the ``ARCHIVES`` table. Extraction
    never deletes a folder, and replaces files of other contents only with ``overwrite``
    (``deeplabv1.data.archive.extract_archive``).
    """
    root = Path(root)
    table = ARCHIVES if archives is None else archives
    md5 = md5 or {}
    out = {}
    for name in names:
        if name not in table:
            raise DeepLabError(f"unknown archive {name!r}; known: {', '.join(table)}")
        arc = table[name]
        if source is None:
            url = arc.url
        elif "://" in source:
            url = source.rstrip("/") + "/" + arc.filename
        else:
            url = str(Path(source) / arc.filename)
        path = fetch(url, root / arc.filename, md5.get(name, arc.md5), progress)
        if not extract:
            out[name] = path
            continue
        target = root / arc.extracts_to
        marker = root / f".{arc.filename}.extracted"
        if not (marker.is_file() and target.is_dir()):
            extract_archive(path, root, overwrite=overwrite)
            if not target.is_dir():
                raise DeepLabError(f"{path}: extracted, but {target} is not there")
            atomic_write_text(marker, file_md5(path) + "\n")
        out[name] = target
    return out
