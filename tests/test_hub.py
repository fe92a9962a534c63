"""hubconf.py through torch.hub.load(<repo dir>, ..., source="local"): every variant, weights by
path and by URL, another number of classes, and a clone whose package is not installed."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from deeplabv1.checkpoint import save_checkpoint
from deeplabv1.errors import DeepLabError
from deeplabv1.models import MODEL_NAMES, build_model

REPO = Path(__file__).resolve().parents[1]
WIDTH = 1 / 16


def hub_load(entry: str, **kwargs):
    return torch.hub.load(str(REPO), entry, source="local", **kwargs)


@pytest.fixture
def hub_dir(tmp_path):
    """Downloads go to a temporary torch.hub folder, not the user's cache."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def _saved(tmp_path: Path, arch: str = "deeplab-largefov", name: str = "model.pt"):
    model = build_model(arch, width=WIDTH, num_classes=3)
    path = tmp_path / name
    save_checkpoint(path, model.state_dict(), arch=arch, num_classes=3, width=WIDTH,
                    model_kwargs=model.model_kwargs, class_names=["bg", "road", "car"])  # fmt: skip
    return model, path


def test_one_entry_point_per_variant():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    names = sorted(n for n in dir(hubconf) if n.startswith("deeplab"))
    assert names == sorted(a.replace("-", "_") for a in MODEL_NAMES)
    assert all(importlib.util.find_spec(d) for d in hubconf.dependencies)
    for arch in MODEL_NAMES:
        model = hub_load(arch.replace("-", "_"), num_classes=4, width=WIDTH)
        reference = build_model(arch, num_classes=4, width=WIDTH)
        assert (model.arch, model.num_classes) == (arch, 4)
        assert {k: v.shape for k, v in model.state_dict().items()} == {
            k: v.shape for k, v in reference.state_dict().items()}  # fmt: skip
        assert model.class_names == ["class0", "class1", "class2", "class3"]


def test_weights_by_path_and_by_url(tmp_path, hub_dir):
    src, path = _saved(tmp_path)
    for weights in (str(path), path.as_uri()):
        model = hub_load("deeplab_largefov", weights=weights)
        for name, value in src.state_dict().items():
            assert torch.equal(model.state_dict()[name], value), name
        assert model.class_names == ["bg", "road", "car"] and model.training
    assert (hub_dir / "checkpoints" / "model.pt").is_file()  # the URL's download
    x = torch.randn(1, 3, 65, 65)
    model.eval()
    torch.testing.assert_close(model(x), src.eval()(x))


def test_check_hash_verifies_the_download(tmp_path, hub_dir):
    _, path = _saved(tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    good = path.rename(tmp_path / f"model-{digest[:10]}.pt")
    model = hub_load("deeplab_largefov", weights=good.as_uri(), check_hash=True)
    assert model.num_classes == 3
    bad = shutil.copy(good, tmp_path / "model-0123456789.pt")
    with pytest.raises(DeepLabError, match="download failed"):
        hub_load("deeplab_largefov", weights=Path(bad).as_uri(), check_hash=True)
    assert not (hub_dir / "checkpoints" / "model-0123456789.pt").exists()


def test_other_classes_keep_the_trunk_with_a_warning(tmp_path):
    src, path = _saved(tmp_path, "deeplab-msc")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = hub_load("deeplab_msc", weights=str(path), num_classes=5)
    assert "classifier re-initialised as released for 5 classes" in str(caught[-1].message)
    assert model.num_classes == 5 and model.fc8.weight.shape[0] == 5
    assert torch.equal(model.conv3_1.weight, src.conv3_1.weight)
    assert torch.equal(model.pool2_conv.weight, src.pool2_conv.weight)  # branch hidden layers
    with pytest.raises(
        DeepLabError, match="holds a deeplab-msc network, not deeplab .*'deeplab_msc'"
    ):
        hub_load("deeplab", weights=str(path))
    with pytest.raises(DeepLabError, match="checkpoint file not found"):
        hub_load("deeplab", weights=str(tmp_path / "nope.pt"))


def test_a_clone_without_the_package_installed(tmp_path):
    """hubconf imports deeplabv1 from its own src/ when the package is not importable."""
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "src", clone / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "hubconf.py", clone / "hubconf.py")
    code = f"""
import importlib.util, sys
sys.path[:] = [p for p in sys.path if p != {str(REPO / "src")!r}]
assert importlib.util.find_spec("deeplabv1") is None, "deeplabv1 importable before hubconf"
import torch
model = torch.hub.load({str(clone)!r}, "deeplab_largefov", source="local", width=0.0625,
                       num_classes=2)
import deeplabv1
assert deeplabv1.__file__.startswith({str(clone)!r}), deeplabv1.__file__
print(type(model).__name__, model.num_classes)
"""
    env = {**os.environ, "PYTHONPATH": ""}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["DeepLabV1", "2"]
