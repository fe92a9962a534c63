"""The evaluator end to end on a tiny synthetic dataset against independent computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from deeplabv1.checkpoint import save_checkpoint
from deeplabv1.cli import main as cli_main
from deeplabv1.crf import CRFParams, deeplab_crf
from deeplabv1.data.datasets import voc_dataset
from deeplabv1.data.palette import read_label_png
from deeplabv1.data.synth import make_synthetic_voc
from deeplabv1.data.transforms import TestTransform
from deeplabv1.errors import DeepLabError
from deeplabv1.evaluate.config import EvalConfig
from deeplabv1.evaluate.run import run_eval
from deeplabv1.models import build_model
from deeplabv1.models.inference import predict_scores

NUM_CLASSES = 4
TEST_SIZE = 33
ITERS = 3  # few mean-field iterations: the exact dense filter is slow
PARAMS = CRFParams(w1=4, sa=10, sb=20, w2=3, sg=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = make_synthetic_voc(root / "voc", 3, size=(32, 24), num_classes=NUM_CLASSES, seed=3)
    torch.manual_seed(0)
    model = build_model("deeplab-largefov", num_classes=NUM_CLASSES, width=1 / 16).eval()
    weights = root / "model.pt"
    save_checkpoint(weights, model.state_dict(), arch=model.arch, num_classes=NUM_CLASSES,
                    width=model.width, model_kwargs=model.model_kwargs)  # fmt: skip
    return root, data, model, weights


def config(root, data, **kw):
    base = dict(data=str(data), split="trainval", test_size=TEST_SIZE, crf=True,
                w1=PARAMS.w1, sa=PARAMS.sa, sb=PARAMS.sb, w2=PARAMS.w2, sg=PARAMS.sg,
                crf_method="dense", crf_iters=ITERS, trimap=True, trimap_max_width=6,
                progress=False, device="cpu")  # fmt: skip
    base.update(kw)
    return EvalConfig(**base)


def set_iou(preds, gts):
    """Per-class IoU (%) by counting pixel sets; None where the class is nowhere."""
    out = []
    for c in range(NUM_CLASSES):
        inter = union = 0
        for p, g in zip(preds, gts):
            valid = g != 255
            inter += int(((p == c) & (g == c) & valid).sum())
            union += int((((p == c) | (g == c)) & valid).sum())
        out.append(100 * inter / union if union else None)
    return out


def test_eval_matches_independent_pipeline_and_rerun_from_scores(setup):
    root, data, model, weights = setup
    cfg = config(root, data, weights=str(weights), save_scores=str(root / "scores"),
                 save_predictions=True, out=str(root / "out"))  # fmt: skip
    res = run_eval(cfg)
    # the same pipeline built by hand from the contract functions
    ds = voc_dataset(data, "trainval", transform=TestTransform(None), num_classes=NUM_CLASSES)
    net_preds, crf_preds, gts = [], [], []
    for i in range(len(ds)):
        item = ds[i]
        scores = predict_scores(model, item["image"][None], TEST_SIZE)[0]
        net_preds.append(scores.argmax(0).numpy())
        probs = deeplab_crf(scores, item["rgb"].numpy(), PARAMS, ITERS, method="dense")
        crf_preds.append(probs.argmax(0).numpy())
        gts.append(item["label"].numpy())
    assert res["num_images"] == 3
    for method, preds in (("network", net_preds), ("crf", crf_preds)):
        got = res["methods"][method]
        expected = set_iou(preds, gts)
        for name, e in zip(got["per_class_iou"], expected):
            assert (got["per_class_iou"][name] is None) == (e is None)
            if e is not None:
                assert got["per_class_iou"][name] == pytest.approx(e, abs=1e-3)
        defined = [e for e in expected if e is not None]
        assert got["mean_iou"] == pytest.approx(sum(defined) / len(defined), abs=1e-3)
        assert got["num_pixels"] == sum(int((g != 255).sum()) for g in gts)
        for sid, pred in zip(ds.ids, preds):
            png = read_label_png(root / "out" / "predictions" / method / f"{sid}.png")
            np.testing.assert_array_equal(png, pred)
    # outputs
    out = root / "out"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["format"] == "deeplabv1-eval" and on_disk["methods"] == res["methods"]
    assert on_disk["trimap"]["widths"] == [1, 2, 3, 4, 5, 6]
    assert len(on_disk["trimap"]["crf"]) == 6
    assert yaml.safe_load((out / "config.yaml").read_text())["sa"] == PARAMS.sa
    md = (out / "results.md").read_text()
    assert "DeepLab-LargeFOV" in md and "DeepLab-CRF-LargeFOV" in md and "w=5" in md
    assert sorted(p.name for p in (root / "scores").iterdir()) == sorted(
        [f"{s}.npz" for s in ds.ids] + ["meta.json", ".deeplabv1-outputs"]
    )
    # the CRF rerun from saved scores (no network) reproduces every number
    res2 = run_eval(config(root, data, scores=str(root / "scores"), out=str(root / "out2")))
    assert res2["methods"] == res["methods"] and res2["trimap"] == res["trimap"]


def test_float16_compressed_scores_and_cli(setup, capsys):
    root, data, _, weights = setup
    argv = ["eval", "--weights", str(weights), "--data", str(data), "--split", "val",
            "--test-size", str(TEST_SIZE), "--save-scores", str(root / "s16"),
            "--score-dtype", "float16", "--compress", "--progress", "false",
            "-o", str(root / "cli")]  # fmt: skip
    assert cli_main(argv) == 0
    assert "mean IoU" in capsys.readouterr().out
    res = json.loads((root / "cli" / "results.json").read_text())
    assert list(res["methods"]) == ["network"] and res["crf_params"] is None
    with np.load(next((root / "s16").glob("*.npz"))) as z:
        assert z["scores"].dtype == np.float16 and z["scores"].shape[0] == NUM_CLASSES


def test_bad_input_is_a_clean_error(setup, capsys):
    root, data, _, weights = setup
    with pytest.raises(DeepLabError, match="exactly one"):
        run_eval(config(root, data, out=str(root / "bad")))
    with pytest.raises(DeepLabError, match="score"):
        run_eval(config(root, data, scores=str(root / "nope"), out=str(root / "bad")))
    assert cli_main(["eval", "--weights", str(root / "missing.pt"), "--data", str(data),
                     "-o", str(root / "bad")]) == 2  # fmt: skip
    assert "checkpoint file not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory):
    """Three images, two larger than the test size (64 x 48) and one smaller (30 x 20)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("eval_sizes")
    data = make_synthetic_voc(root / "voc", 3, size=(64, 48), num_classes=NUM_CLASSES, seed=4)
    sid = sorted(p.stem for p in (data / "JPEGImages").glob("*.jpg"))[1]
    for folder, suffix, resample in (("JPEGImages", ".jpg", Image.BILINEAR),
                                     ("SegmentationClass", ".png", Image.NEAREST)):  # fmt: skip
        path = data / folder / f"{sid}{suffix}"
        with Image.open(path) as img:
            img.resize((30, 20), resample).save(path)
    return data


@pytest.mark.parametrize("arch,test_size,batch_size", [
    ("deeplab-largefov", 41, 2), ("deeplab", 41, 1), ("deeplab-largefov", 0, 2)])  # fmt: skip
def test_eval_pads_large_images_as_segmenter_does(mixed_sizes, tmp_path, arch, test_size,
                                                  batch_size):  # fmt: skip
    """Images larger than --test-size (and --test-size 0) are padded as predict / Segmenter
    pad them, not refused: eval's scores and labels are Segmenter's, image by image."""
    from deeplabv1 import Segmenter
    from deeplabv1.evaluate.scores import full_scores, load_scores

    torch.manual_seed(1)
    model = build_model(arch, num_classes=NUM_CLASSES, width=1 / 16).eval()
    weights = tmp_path / "m.pt"
    save_checkpoint(weights, model.state_dict(), arch=model.arch, num_classes=NUM_CLASSES,
                    width=model.width, model_kwargs=model.model_kwargs)  # fmt: skip
    argv = ["eval", "--weights", str(weights), "--data", str(mixed_sizes), "--split", "trainval",
            "--test-size", str(test_size), "--batch-size", str(batch_size), "--save-predictions",
            "--save-scores", str(tmp_path / "scores"), "--progress", "false", "--device", "cpu",
            "-o", str(tmp_path / "out")]  # fmt: skip
    assert cli_main(argv) == 0
    seg = Segmenter(model, test_size=test_size or None)
    ds = voc_dataset(mixed_sizes, "trainval", num_classes=NUM_CLASSES)
    assert sorted({ds.load(i)[0].shape for i in range(len(ds))}) == [(20, 30, 3), (48, 64, 3)]
    for i, sid in enumerate(ds.ids):
        rgb = ds.load(i)[0]
        ref = seg.predict(rgb)
        coarse, h, w, factor, crop = load_scores(tmp_path / "scores", sid)
        scores = full_scores(coarse, h, w, factor, crop)
        np.testing.assert_allclose(scores.numpy(), ref.scores, rtol=1e-4, atol=1e-4)
        png = read_label_png(tmp_path / "out" / "predictions" / "network" / f"{sid}.png")
        np.testing.assert_array_equal(png, scores.argmax(0).numpy())


def test_eval_names_the_image_the_network_cannot_run_on(mixed_sizes, tmp_path, capsys,
                                                        monkeypatch):  # fmt: skip
    from deeplabv1.models import inference

    model = build_model("deeplab-largefov", num_classes=NUM_CLASSES, width=1 / 16)
    weights = tmp_path / "m.pt"
    save_checkpoint(weights, model.state_dict(), arch=model.arch, num_classes=NUM_CLASSES,
                    width=model.width, model_kwargs=model.model_kwargs)  # fmt: skip
    real = inference.run_test_network

    def out_of_memory_for_large_inputs(net, x):
        if x.shape[-1] > 60:
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate")
        return real(net, x)

    monkeypatch.setattr(inference, "run_test_network", out_of_memory_for_large_inputs)
    argv = ["eval", "--weights", str(weights), "--data", str(mixed_sizes), "--split", "trainval",
            "--test-size", "41", "--progress", "false", "--device", "cpu",
            "-o", str(tmp_path / "out")]  # fmt: skip
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    first = sorted((mixed_sizes / "JPEGImages").glob("*.jpg"))[0]
    assert err.splitlines() == [
        f"deeplabv1 eval: error: {first}: cannot run the network on a 64x48 input "
        "(DefaultCPUAllocator: not enough memory: you tried to allocate)"
    ]


def test_eval_leaves_the_callers_model_mode(setup):
    """The network runs in eval mode (no dropout); a model in training mode stays in it."""
    from deeplabv1.evaluate.evaluator import evaluate

    root, data, model, _ = setup
    ds = voc_dataset(data, "trainval", transform=TestTransform(TEST_SIZE), num_classes=NUM_CLASSES)
    ref = evaluate(ds, model=model.eval())
    model.train()
    try:
        assert evaluate(ds, model=model)["methods"] == ref["methods"]
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
