"""The built wheel: package data, metadata, and configs loading by name from an installed copy.

One wheel is built (from a copy of the sources, so the checkout gets no build/ folder) and
installed with --no-deps into a fresh virtual environment that borrows this environment's
dependencies through a .pth line; deeplabv1 itself then comes only from the wheel.
"""

from __future__ import annotations

import email
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from source_tree import copy_source

REPO = Path(__file__).resolve().parents[1]
PIP_ENV = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    run = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert run.returncode == 0, f"{cmd}: {run.stdout[-2000:]}{run.stderr[-2000:]}"
    return run


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    src = copy_source(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "--quiet", "-w", out, src], env=PIP_ENV)  # fmt: skip
    (found,) = out.glob("deeplabv1-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A venv with the wheel installed (no deps); returns its python."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=False)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    # this environment's torch, numpy, yaml... after the venv's own site-packages
    (Path(site.stdout.strip()) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"])
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
          "--no-index", "--quiet", wheel], env=PIP_ENV)  # fmt: skip
    return python


def test_wheel_holds_the_configs_license_and_type_marker(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (REPO / "src" / "deeplabv1" / "configs").glob("*.yaml"))
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("deeplabv1/configs/")) == (
        shipped
    )
    assert "deeplabv1/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(zf.read(meta_name))
        license_text = zf.read(meta_name.replace("METADATA", "licenses/LICENSE")).decode()
    assert meta["License-Expression"] == "MIT"
    assert license_text.startswith("MIT License")
    assert meta["Author"]
    assert "Typing :: Typed" in meta.get_all("Classifier")
    assert len(meta.get_all("Classifier")) >= 5
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert urls["Paper"] == "https://arxiv.org/abs/1412.7062"


def test_installed_wheel_loads_configs_by_name(installed, tmp_path):
    code = (
        "import deeplabv1, json\n"
        "from deeplabv1.config import load_yaml, config_from_dict\n"
        "from deeplabv1.train.config import TrainConfig\n"
        "cfg = config_from_dict(TrainConfig, load_yaml('voc-largefov-stage1'))\n"
        "print(json.dumps([deeplabv1.__file__, cfg.arch, cfg.max_iter]))\n"
    )
    run = _run([installed, "-c", code], cwd=tmp_path)
    where, arch, max_iter = __import__("json").loads(run.stdout)
    assert Path(where).is_relative_to(installed.parents[1])  # the wheel's copy, not the checkout
    assert (arch, max_iter) == ("deeplab-largefov", 6000)
    script = installed.with_name("deeplabv1.exe" if os.name == "nt" else "deeplabv1")
    listing = _run([script, "train", "--list-configs"], cwd=tmp_path).stdout
    assert "voc-largefov-stage1" in listing and str(installed.parents[1]) in listing
    help_text = _run([script, "train", "--help"], cwd=tmp_path).stdout
    assert "(default: 6000)" in help_text
