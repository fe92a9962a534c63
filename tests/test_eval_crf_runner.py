"""Where and how ``eval --crf`` runs the CRF: batches of one size give each image's own labels,
the CPU engine without a GPU, the network's GPU (batched) with one, the CPU as fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import requires_cuda

from deeplabv1.crf import CRFParams, deeplab_crf
from deeplabv1.errors import DeepLabError
from deeplabv1.evaluate.crf_runner import CRFRunner

PARAMS = CRFParams(w1=4, sa=10, sb=20, w2=3, sg=1)


def images(sizes, seed=0, classes=4):
    """(key, scores (C, H, W) tensor, rgb) with a smooth, noisy label layout per image."""
    rng = np.random.default_rng(seed)
    out = []
    for k, (h, w) in enumerate(sizes):
        lab = (np.add.outer(np.arange(h) // 7, np.arange(w) // 9) + k) % classes
        scores = 2.0 * np.eye(classes, dtype=np.float32)[lab].transpose(2, 0, 1)
        scores += rng.normal(0, 1.5, scores.shape).astype(np.float32)
        rgb = (lab[..., None] * 60 + rng.integers(0, 40, (h, w, 3))).astype(np.uint8)
        out.append((f"img{k}", torch.from_numpy(scores), rgb))
    return out


def run_all(runner, items) -> dict:
    got = {}
    for key, scores, rgb in items:
        for k, labels in runner.submit(key, scores, rgb):
            assert k not in got
            got[k] = labels
    for k, labels in runner.flush():
        assert k not in got
        got[k] = labels
    return got


def test_batches_of_one_size_give_each_image_its_own_labels():
    items = images([(24, 40), (32, 40), (24, 40), (32, 40), (24, 40), (32, 40), (24, 40)])
    runner = CRFRunner(PARAMS, iters=5, batch_size=3)
    got = run_all(runner, items)
    assert sorted(got) == sorted(k for k, _, _ in items)
    for key, scores, rgb in items:
        alone = deeplab_crf(scores, rgb, PARAMS, 5).argmax(0).numpy()
        np.testing.assert_array_equal(got[key], alone)
    assert runner.seconds > 0


def test_waiting_images_stay_bounded_with_many_sizes():
    runner = CRFRunner(PARAMS, iters=1, batch_size=2)
    items = images([(16 + k, 20) for k in range(12)])  # 12 sizes, no group ever fills
    finished = 0
    for key, scores, rgb in items:
        finished += len(runner.submit(key, scores, rgb))
        assert sum(len(g) for g in runner._pending.values()) <= 4 * 2
    assert finished > 0 and finished + len(runner.flush()) == 12


def test_devices_on_a_cpu_machine():
    cpu = torch.device("cpu")
    for choice in ("auto", "cpu", "same"):
        assert CRFRunner(PARAMS, device=choice).target(cpu) == cpu
    cuda = torch.device("cuda", 1)  # only the choice is computed, nothing runs there
    assert CRFRunner(PARAMS, device="auto").target(cuda) == cuda
    assert CRFRunner(PARAMS, device="same").target(cuda) == cuda
    assert CRFRunner(PARAMS, device="cpu").target(cuda) == cpu
    assert CRFRunner(PARAMS)._batch(cuda) == 8 and CRFRunner(PARAMS)._batch(cpu) == 1
    with pytest.raises(DeepLabError, match="crf device"):
        CRFRunner(PARAMS, device="gpu")
    with pytest.raises(DeepLabError, match="batch size"):
        CRFRunner(PARAMS, batch_size=0)


@requires_cuda
def test_cuda_batches_match_the_cpu_engine():
    items = images([(375, 500)] * 4 + [(333, 500)] * 2, classes=21)
    on_gpu = [(k, s.cuda(), rgb) for k, s, rgb in items]
    runner = CRFRunner(PARAMS, iters=10, device="same", batch_size=4)
    got = run_all(runner, on_gpu)
    assert runner.fallbacks == 0
    for key, scores, rgb in items:
        cpu = deeplab_crf(scores, rgb, PARAMS, 10).argmax(0).numpy()
        assert (got[key] == cpu).mean() > 0.999, key  # float order differs, labels agree


@requires_cuda
def test_cuda_out_of_memory_falls_back_to_the_cpu_engine(monkeypatch, capsys):
    items = [(k, s.cuda(), rgb) for k, s, rgb in images([(48, 64)] * 3)]
    runner = CRFRunner(PARAMS, iters=5, device="same", batch_size=3)
    real = runner._crf

    def oom_on_gpu_batches(scores, rgb, device):
        if device.type == "cuda" and scores.dim() == 4:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(scores, rgb, device)

    monkeypatch.setattr(runner, "_crf", oom_on_gpu_batches)
    got = run_all(runner, items)
    assert runner.fallbacks == 3 and "CPU engine" in capsys.readouterr().err
    for key, scores, rgb in items:
        cpu = deeplab_crf(scores.cpu(), rgb, PARAMS, 5).argmax(0).numpy()
        np.testing.assert_array_equal(got[key], cpu)


@requires_cuda
def test_eval_on_cuda_runs_the_crf_on_the_gpu_like_the_cpu_engine(tmp_path):
    from deeplabv1.checkpoint import save_checkpoint
    from deeplabv1.data.synth import make_synthetic_voc
    from deeplabv1.evaluate.config import EvalConfig
    from deeplabv1.evaluate.run import run_eval
    from deeplabv1.models import build_model

    data = make_synthetic_voc(tmp_path / "voc", 6, size=(64, 48), num_classes=4, seed=2)
    model = build_model("deeplab-largefov", num_classes=4, width=1 / 16)
    save_checkpoint(tmp_path / "m.pt", model.state_dict(), arch=model.arch, num_classes=4,
                    width=model.width, model_kwargs=model.model_kwargs)  # fmt: skip
    base = dict(weights=str(tmp_path / "m.pt"), data=str(data), split="trainval", test_size=65,
                crf=True, sa=10.0, sb=20.0, progress=False, device="cuda")  # fmt: skip
    gpu = run_eval(EvalConfig(**base, crf_device="auto", crf_batch_size=4, out=str(tmp_path / "g")))
    cpu = run_eval(EvalConfig(**base, crf_device="cpu", out=str(tmp_path / "c")))
    assert gpu["methods"]["network"] == cpu["methods"]["network"]
    a, b = (np.array(r["methods"]["crf"]["confusion_matrix"]) for r in (gpu, cpu))
    assert a.sum() == b.sum() and np.abs(a - b).sum() <= 0.002 * a.sum()
