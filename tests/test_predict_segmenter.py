"""The Python API: Segmenter.from_checkpoint / predict against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import requires_cuda
from PIL import Image

from deeplabv1 import Segmenter
from deeplabv1.checkpoint import save_checkpoint
from deeplabv1.data.caffe_input import MEAN_BGR
from deeplabv1.errors import DeepLabError
from deeplabv1.models import build_model
from deeplabv1.predict.segmenter import Prediction, padded_size

WIDTH = 1 / 16


def _checkpoint(path, arch="deeplab-largefov", **extra):
    torch.manual_seed(0)
    model = build_model(arch, width=WIDTH)
    save_checkpoint(path, model.state_dict(), arch=arch, num_classes=model.num_classes,
                    width=WIDTH, model_kwargs=model.model_kwargs, **extra)  # fmt: skip
    return model.eval()


def _image(h=37, w=45, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _reference_scores(model, rgb, size_h, size_w):
    """Pad with the mean colour in RGB space, convert by hand, run, zoom x8 align-corners, crop."""
    h, w = rgb.shape[:2]
    canvas = np.empty((size_h, size_w, 3), np.float32)
    canvas[:] = np.asarray(MEAN_BGR, np.float32)[::-1]
    canvas[:h, :w] = rgb
    x = torch.from_numpy((canvas[:, :, ::-1] - np.asarray(MEAN_BGR, np.float32)).copy())
    with torch.no_grad():
        s = model(x.permute(2, 0, 1)[None].float())
    zoomed = F.interpolate(s, size=((s.shape[2] - 1) * 8 + 1, (s.shape[3] - 1) * 8 + 1),
                           mode="bilinear", align_corners=True)  # fmt: skip
    return zoomed[0, :, :h, :w]


def test_padded_size_rule():
    for size in range(1, 130):
        p = padded_size(size, None)
        assert p >= size and (p - 1) % 8 == 0 and p - 8 < size
        assert padded_size(size, 65) == max(65, p)
    assert padded_size(500, 513) == 513 and padded_size(640, 513) == 641


@pytest.mark.parametrize("test_size", [None, 65])
def test_network_result_matches_reference(tmp_path, test_size):
    model = _checkpoint(tmp_path / "m.pt")
    seg = Segmenter.from_checkpoint(tmp_path / "m.pt", device="cpu", test_size=test_size)
    rgb = _image()
    result = seg.predict(rgb)
    size = (padded_size(37, test_size), padded_size(45, test_size))
    ref = _reference_scores(model, rgb, *size)
    np.testing.assert_allclose(result.scores, ref.numpy(), rtol=1e-4, atol=1e-4)
    probs = torch.softmax(ref, 0).numpy()
    np.testing.assert_allclose(result.probs, probs, rtol=1e-4, atol=1e-5)
    assert result.labels.shape == (37, 45) and result.labels.dtype == np.uint8
    assert result.probs.shape == (21, 37, 45) and result.probs.dtype == np.float32
    np.testing.assert_array_equal(result.labels, result.probs.argmax(0))
    assert result.crf_labels is None and result.crf_probs is None
    labels, probs_out = result  # unpacks as (labels, probs)
    assert labels is result.labels and probs_out is result.probs


def test_pil_numpy_and_gray_inputs_agree(tmp_path):
    _checkpoint(tmp_path / "m.pt")
    seg = Segmenter.from_checkpoint(tmp_path / "m.pt", test_size=None)
    rgb = _image()
    a = seg.predict(rgb)
    b = seg.predict(Image.fromarray(rgb))
    np.testing.assert_array_equal(a.probs, b.probs)
    gray = rgb[:, :, 0]
    c = seg.predict(gray)
    d = seg.predict(Image.fromarray(gray, mode="L"))
    e = seg.predict(np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(c.probs, e.probs)
    np.testing.assert_array_equal(d.probs, e.probs)


def test_image_larger_than_test_size(tmp_path):
    model = _checkpoint(tmp_path / "m.pt")
    seg = Segmenter(model, test_size=33)
    rgb = _image(50, 20)
    result = seg.predict(rgb)
    assert result.labels.shape == (50, 20)
    ref = _reference_scores(model, rgb, 57, 33)
    np.testing.assert_allclose(result.scores, ref.numpy(), rtol=1e-4, atol=1e-4)


def test_crf_result_and_checkpoint_crf_params(tmp_path):
    pytest.importorskip("deeplabv1.crf.torch.lattice")
    from deeplabv1.crf import deeplab_crf
    from deeplabv1.crf.params import DEEPLAB_CRF_PARAMS, CRFParams

    saved = {"w1": 5.0, "sa": 30.0, "sb": 7.0, "w2": 3.0, "sg": 3.0}
    _checkpoint(tmp_path / "m.pt", crf=saved)
    seg = Segmenter.from_checkpoint(tmp_path / "m.pt", test_size=None)
    assert seg.crf_params == CRFParams(**saved)
    rgb = _image()
    result = seg.predict(rgb, crf=True)
    want = deeplab_crf(torch.from_numpy(result.scores), rgb, CRFParams(**saved), iters=10)
    np.testing.assert_allclose(result.crf_probs, want.numpy(), atol=1e-5)
    assert result.probs is result.crf_probs and result.labels is result.crf_labels
    np.testing.assert_array_equal(result.crf_labels, result.crf_probs.argmax(0))
    np.testing.assert_array_equal(result.net_labels, seg.predict(rgb).labels)
    default = Segmenter.from_checkpoint(tmp_path / "m.pt", crf_params="deeplab")
    assert default.crf_params == DEEPLAB_CRF_PARAMS["deeplab"]


@pytest.mark.parametrize("arch", ["deeplab", "deeplab-msc"])
def test_other_variants_reduced_width(tmp_path, arch):
    _checkpoint(tmp_path / "m.pt", arch=arch)
    seg = Segmenter.from_checkpoint(tmp_path / "m.pt", test_size=None)
    assert seg.crf_params.w1 == {"deeplab": 5, "deeplab-msc": 3}[arch]
    result = seg.predict(_image(30, 26))
    assert isinstance(result, Prediction) and result.labels.shape == (30, 26)
    np.testing.assert_allclose(result.probs.sum(0), 1.0, atol=1e-5)


def test_bad_inputs(tmp_path):
    model = _checkpoint(tmp_path / "m.pt")
    seg = Segmenter(model)
    with pytest.raises(DeepLabError, match="uint8"):
        seg.predict(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(DeepLabError, match="uint8"):
        seg.predict(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(DeepLabError, match="unknown variant"):
        Segmenter(model, crf_params="nope")
    with pytest.raises(DeepLabError, match="not found"):
        Segmenter.from_checkpoint(tmp_path / "missing.pt")
    if not torch.cuda.is_available():
        with pytest.raises(DeepLabError, match="no CUDA GPU"):
            Segmenter(model, device="cuda")


@requires_cuda
def test_cuda_matches_cpu(tmp_path):
    _checkpoint(tmp_path / "m.pt")
    rgb = _image()
    cpu = Segmenter.from_checkpoint(tmp_path / "m.pt", device="cpu", test_size=None)
    gpu = Segmenter.from_checkpoint(tmp_path / "m.pt", device="cuda", test_size=None)
    a, b = cpu.predict(rgb, crf=True), gpu.predict(rgb, crf=True)
    np.testing.assert_allclose(b.net_probs, a.net_probs, atol=1e-3)
    assert (b.crf_labels == a.crf_labels).mean() > 0.99


def test_model_in_training_mode_gives_repeatable_scores_and_keeps_its_mode(tmp_path):
    """Segmenter runs the network in eval mode (no dropout) and leaves the caller's model in
    the mode it was given: a model handed over mid-training stays in training mode."""
    model = _checkpoint(tmp_path / "m.pt").train()
    seg = Segmenter(model, test_size=None)
    rgb = _image()
    a, b = seg.predict(rgb), seg.predict(rgb)
    assert model.training and seg.model.training
    np.testing.assert_array_equal(a.scores, b.scores)
    ref = Segmenter.from_checkpoint(tmp_path / "m.pt", test_size=None).predict(rgb)
    np.testing.assert_array_equal(a.scores, ref.scores)
