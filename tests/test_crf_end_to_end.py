"""`train --crf end-to-end` (joint stage) and the learned CRF in eval / predict / deeplab_crf."""

from __future__ import annotations

import json

import pytest
import torch

from deeplabv1.checkpoint import load_checkpoint, save_checkpoint
from deeplabv1.crf import deeplab_crf
from deeplabv1.crf.params import CRFParams
from deeplabv1.crf.torch.layer import CRFLayer
from deeplabv1.crf.torch.learned import LearnedCRFParams
from deeplabv1.train.config import TrainConfig
from deeplabv1.train.loop import train

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from deeplabv1.data.synth import make_synthetic_voc

    return make_synthetic_voc(tmp_path_factory.mktemp("synth"), 6, size=(56, 48), seed=0,
                              num_classes=NUM_CLASSES)  # fmt: skip


def learned_layer() -> CRFLayer:
    g = torch.Generator().manual_seed(0)
    layer = CRFLayer(NUM_CLASSES, CRFParams(4, 20, 15, 3, 3))
    with torch.no_grad():
        layer.compat.add_(0.4 * torch.randn(NUM_CLASSES, NUM_CLASSES, generator=g))
        layer.weights.mul_(torch.tensor([0.7, 1.3]))
    return layer


def test_deeplab_crf_runs_learned_params_as_the_layer():
    """eval and predict call deeplab_crf: with LearnedCRFParams it is the layer at 10 updates."""
    g = torch.Generator().manual_seed(1)
    scores = 2 * torch.randn(1, NUM_CLASSES, 20, 24, generator=g)
    img = torch.randint(0, 256, (1, 20, 24, 3), generator=g, dtype=torch.uint8)
    layer = learned_layer()
    params = layer.crf_params()
    assert isinstance(params, LearnedCRFParams)
    with torch.no_grad():
        expected = layer(scores, img, iters=10).softmax(1)
    got = deeplab_crf(scores, img, params, iters=10)
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=0)
    potts = deeplab_crf(scores, img, CRFParams(**{k: getattr(params, k) for k in
                                                  ("w1", "sa", "sb", "w2", "sg")}))  # fmt: skip
    assert float((potts - expected).abs().max()) > 1e-2  # the compatibility matters


def test_eval_and_predict_read_the_learned_entry(tmp_path):
    from deeplabv1.evaluate.config import EvalConfig
    from deeplabv1.evaluate.run import resolve_crf_params
    from deeplabv1.models import build_model
    from deeplabv1.predict.segmenter import Segmenter

    model = build_model("deeplab-largefov", num_classes=NUM_CLASSES, width=1 / 16)
    layer = learned_layer()
    path = tmp_path / "e2e.pt"
    save_checkpoint(path, model.state_dict(), arch=model.arch, num_classes=NUM_CLASSES,
                    width=model.width, crf=layer.checkpoint_entry())  # fmt: skip
    entry = load_checkpoint(path)["crf"]  # weights_only=True round trip
    expected = layer.crf_params()
    assert resolve_crf_params(EvalConfig(crf=True), "deeplab-largefov", entry) == expected
    overridden = resolve_crf_params(EvalConfig(crf=True, sg=5.0), "deeplab-largefov", entry)
    assert isinstance(overridden, LearnedCRFParams) and overridden.sg == 5.0
    assert Segmenter.from_checkpoint(path).crf_params == expected


def test_train_crf_end_to_end(synth_root, tmp_path):
    """Stage 1 then the joint stage through train(); the checkpoint carries the learned CRF."""
    cfg = TrainConfig(arch="deeplab-largefov", num_classes=NUM_CLASSES, width=1 / 16,
                      data_root=str(synth_root), split="train", crop_size=41, batch_size=2,
                      max_iter=2, checkpoint_every=0, log_every=1, out_dir=str(tmp_path),
                      workers=0, progress=False, tensorboard=False, device="cpu",
                      crf="end-to-end", crf_max_iter=3, crf_lr=0.05,
                      crf_checkpoint_every=0)  # fmt: skip
    final = train(cfg)
    assert final == tmp_path / "crf" / "final.pt"
    stage1, joint = load_checkpoint(tmp_path / "final.pt"), load_checkpoint(final)
    entry = joint["crf"]
    assert entry["kind"] == "end-to-end" and entry["iters"] == 10
    assert entry["normalization"] == "after"
    assert entry["compat"].shape == (NUM_CLASSES, NUM_CLASSES)
    potts = 1 - torch.eye(NUM_CLASSES)
    assert float((entry["compat"] - potts).abs().max()) > 1e-4  # the compatibility learned
    assert (entry["sa"], entry["sb"], entry["sg"]) == pytest.approx((121, 5, 3))  # not learned
    assert any(not torch.equal(stage1["model"][k], joint["model"][k]) for k in joint["model"])
    # the final checkpoint is a resumable training checkpoint of the stage (no periodic ones)
    assert joint["stage"] == "crf-end-to-end" and joint["iteration"] == 3
    assert joint["data_position"] == 6 and joint["source"] == str(tmp_path / "final.pt")
    assert {"optimizer", "scheduler", "rng", "crf_state", "stage1_iteration"} <= joint.keys()
    assert sorted(p.name for p in (tmp_path / "crf").glob("*.pt")) == ["final.pt"]
    records = [json.loads(x) for x in (tmp_path / "crf" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2, 3]
    assert all({"loss", "lr", "images_per_s", "time", "crf_w1"} <= r.keys() for r in records)
