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


@pytest.fixture
def http_root(tmp_path):
    """(folder, base URL): a local HTTP server on 127.0.0.1 serving ``folder``."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def _assert_weights(model, src) -> None:
    for name, value in src.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_weights_by_path_and_by_url(tmp_path, hub_dir):
    src, path = _saved(tmp_path)
    for weights in (str(path), path.as_uri()):
        model = hub_load("deeplab_largefov", weights=weights)
        _assert_weights(model, src)
        assert model.class_names == ["bg", "road", "car"] and model.training
    assert not (hub_dir / "checkpoints").exists()  # a file:// URL is read in place
    x = torch.randn(1, 3, 65, 65)
    model.eval()
    torch.testing.assert_close(model(x), src.eval()(x))


def test_file_urls_with_one_file_name_give_their_own_models(tmp_path, hub_dir):
    """Every run's checkpoint is called final.pt: two runs, and a file retrained in place."""
    for run in ("run1", "run2"):
        (tmp_path / run).mkdir()
    first, one = _saved(tmp_path / "run1", name="final.pt")
    second, two = _saved(tmp_path / "run2", name="final.pt")
    assert not torch.equal(first.fc8.weight, second.fc8.weight)
    _assert_weights(hub_load("deeplab_largefov", weights=one.as_uri()), first)
    _assert_weights(hub_load("deeplab_largefov", weights=two.as_uri()), second)
    third, _ = _saved(tmp_path / "run1", name="final.pt")  # run1 retrained
    assert not torch.equal(first.fc8.weight, third.fc8.weight)
    _assert_weights(hub_load("deeplab_largefov", weights=one.as_uri()), third)
    assert not (hub_dir / "checkpoints").exists()


def test_http_urls_with_one_file_name_are_cached_apart(tmp_path, hub_dir, http_root):
    folder, base = http_root
    for run in ("run1", "run2"):
        (folder / run).mkdir()
    first, _ = _saved(folder / "run1", name="final.pt")
    second, _ = _saved(folder / "run2", name="final.pt")
    urls = [f"{base}/run1/final.pt", f"{base}/run2/final.pt"]
    _assert_weights(hub_load("deeplab_largefov", weights=urls[0]), first)
    _assert_weights(hub_load("deeplab_largefov", weights=urls[1]), second)
    cached = sorted((hub_dir / "checkpoints").iterdir())
    assert len(cached) == 2 and all(p.name.endswith("-final.pt") for p in cached)
    shutil.rmtree(folder / "run1")  # now only the cache holds run1's model
    _assert_weights(hub_load("deeplab_largefov", weights=urls[0]), first)


def test_check_hash_verifies_the_download_and_the_cache(tmp_path, hub_dir, http_root):
    folder, base = http_root
    src, path = _saved(folder)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    good = path.rename(folder / f"model-{digest[:10]}.pt")
    model = hub_load("deeplab_largefov", weights=f"{base}/{good.name}", check_hash=True)
    _assert_weights(model, src)
    (cached,) = (hub_dir / "checkpoints").iterdir()
    _, other = _saved(tmp_path, name="other.pt")
    shutil.copy(other, cached)  # a cached copy that does not match its name: fetched again
    model = hub_load("deeplab_largefov", weights=f"{base}/{good.name}", check_hash=True)
    _assert_weights(model, src)
    assert cached.read_bytes() == good.read_bytes()
    shutil.copy(good, folder / "model-0123456789.pt")
    with pytest.raises(DeepLabError, match="download failed"):
        hub_load("deeplab_largefov", weights=f"{base}/model-0123456789.pt", check_hash=True)
    assert [p.name for p in (hub_dir / "checkpoints").iterdir()] == [cached.name]
    # file:// URLs are checked in place
    assert hub_load("deeplab_largefov", weights=good.as_uri(), check_hash=True).num_classes == 3
    with pytest.raises(DeepLabError, match="SHA-256 does not begin with 0123456789"):
        hub_load("deeplab_largefov", weights=(folder / "model-0123456789.pt").as_uri(),
                 check_hash=True)  # fmt: skip
    with pytest.raises(DeepLabError, match="check_hash needs a file name like"):
        hub_load("deeplab_largefov", weights=f"{base}/final.pt", check_hash=True)


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
