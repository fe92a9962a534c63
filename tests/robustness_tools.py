"""Helpers of the tests/test_robustness_*.py family: run the real command line, small disks."""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CLI = [sys.executable, "-m", "deeplabv1"]


def cli(*args, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``deeplabv1 ARGS`` in a fresh process (the console entry point, as a user runs it)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)  # fmt: skip


def assert_one_line_error(stderr: str, command: str, *fragments: str) -> str:
    """The error is one line ``deeplabv1 COMMAND: error: ...`` holding every fragment."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"deeplabv1 {command}: error: ")]
    assert len(errors) == 1, stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@functools.cache
def _userns_mounts() -> bool:
    if shutil.which("unshare") is None or sys.platform != "linux":
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt "
                            "2>/dev/null || mount -t tmpfs -o size=64k none /tmp"],
                           capture_output=True, timeout=30)  # fmt: skip
    return probe.returncode == 0


def on_small_disk(mount: Path, command: list, *, size: str = "64k", read_only: bool = False,
                  before: str = "") -> tuple[int, str, dict[str, int]]:  # fmt: skip
    """Run ``deeplabv1 COMMAND`` with ``mount`` a fresh tmpfs of ``size`` (read-only when asked)
    in a private mount namespace; returns (exit status, stderr, {file under mount: size} after).

    ``before`` is shell run after mounting (e.g. mkdir) and before a read-only remount. Skips
    when user namespaces cannot mount (no ``unshare``, or not allowed here).
    """
    if not _userns_mounts():
        pytest.skip("needs `unshare -rm` with tmpfs mounts (Linux user namespaces) for a small or "
                    "read-only disk")  # fmt: skip
    mount.mkdir(parents=True, exist_ok=True)
    err = mount.parent / f"{mount.name}.stderr"
    listing = mount.parent / f"{mount.name}.files"
    run = " ".join(shlex.quote(str(a)) for a in [*CLI, *command])
    script = [f"mount -t tmpfs -o size={size} none {shlex.quote(str(mount))}"]
    if before:
        script.append(before)
    if read_only:
        script.append(f"mount -o remount,ro {shlex.quote(str(mount))}")
    script += [f"{run} 2> {shlex.quote(str(err))}; rc=$?",
               f"(cd {shlex.quote(str(mount))} && find . -type f -exec stat -c '%s %n' {{}} +) "
               f"> {shlex.quote(str(listing))}", "exit $rc"]  # fmt: skip
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", " && ".join(script[:-3]) + "; "
                           + "; ".join(script[-3:])], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    files = {}
    for line in listing.read_text().splitlines():
        size_text, name = line.split(" ", 1)
        files[name.removeprefix("./")] = int(size_text)
    return proc.returncode, err.read_text(), files


def tiny_checkpoint(path: Path, *, nan: bool = False, num_classes: int = 3,
                    width: float = 0.0625) -> Path:  # fmt: skip
    """A deeplab-largefov checkpoint at width 1/16 (optionally with NaN weights)."""
    import torch

    from deeplabv1.checkpoint import save_checkpoint
    from deeplabv1.models import build_model

    torch.manual_seed(0)
    model = build_model("deeplab-largefov", num_classes=num_classes, width=width)
    state = model.state_dict()
    if nan:
        state = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
    save_checkpoint(path, state, arch="deeplab-largefov", num_classes=num_classes, width=width)
    return path


def image_and_scores(folder: Path, stem: str, size=(24, 20), classes: int = 3, seed: int = 0):
    """``<stem>.png`` (random RGB) and ``<stem>.npy`` ((C, H, W) scores) in ``folder``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    image = folder / f"{stem}.png"
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(image)
    scores = folder / f"{stem}.npy"
    np.save(scores, rng.normal(size=(classes, h, w)).astype(np.float32))
    return image, scores
