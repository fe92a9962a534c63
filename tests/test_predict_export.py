"""ONNX export: onnxruntime output equals PyTorch's to float tolerance (skips without onnx)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deeplabv1.checkpoint import save_checkpoint
from deeplabv1.cli import main
from deeplabv1.models import build_model
from deeplabv1.predict.export import export_onnx, run_onnx

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _model(arch):
    torch.manual_seed(0)
    return build_model(arch, width=1 / 16).eval()


@pytest.mark.parametrize("arch", ["deeplab-largefov", "deeplab", "deeplab-msc"])
def test_static_export_matches_pytorch(tmp_path, arch):
    import onnx

    model = _model(arch)
    path = export_onnx(model, tmp_path / "m.onnx", input_size=97)
    onnx.checker.check_model(str(path))
    x = torch.randn(1, 3, 97, 97, generator=torch.Generator().manual_seed(1)) * 60
    with torch.no_grad():
        want = model(x).numpy()
    got = run_onnx(path, x.numpy())
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert not list(tmp_path.glob(".*.tmp"))


def test_dynamic_export_other_sizes_and_batch(tmp_path):
    model = _model("deeplab-largefov")
    path = export_onnx(model, tmp_path / "d.onnx", input_size=65, dynamic=True)
    x = torch.randn(2, 3, 81, 57, generator=torch.Generator().manual_seed(2)) * 60
    with torch.no_grad():
        want = model(x).numpy()
    got = run_onnx(path, x.numpy())
    assert got.shape == want.shape == (2, 21, 11, 8)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_export_cli_with_check(tmp_path, capsys):
    model = _model("deeplab-largefov")
    save_checkpoint(tmp_path / "m.pt", model.state_dict(), arch=model.arch, num_classes=21,
                    width=1 / 16, model_kwargs=model.model_kwargs)  # fmt: skip
    rc = main(["export", "--weights", str(tmp_path / "m.pt"), "--onnx", str(tmp_path / "o.onnx"),
               "--input-size", "65", "--check"])  # fmt: skip
    assert rc == 0 and (tmp_path / "o.onnx").stat().st_size > 10_000
    assert "max abs difference" in capsys.readouterr().out
