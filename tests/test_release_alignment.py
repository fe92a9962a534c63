"""Test-time alignment against the release: our maps equal a forward of the test prototxts.

For each released variant: random small-width weights, written as a caffemodel in the release's
exact layout (``release_reference.release_caffemodel``: V1 layers of the fork's format, the train
prototxt's layers in order, legacy 4-D blobs) and converted with ``deeplabv1 convert --from
caffe``. A real VOC image from ../shared/data then goes through ``Segmenter.predict``,
``predict_scores``, ``deeplabv1 eval`` (scores saved and reloaded too) and ``deeplabv1 predict``;
each map must equal the reference forward of the variant's *test* prototxt
(``release_reference.reference_scores``, numpy float64, written from the prototxt's semantics)
to float tolerance, with an identical argmax wherever the reference is not a near tie.
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from release_files import VARIANTS, phase_layers, read_release
from release_reference import FORK_LAYER_TYPES, random_weights, reference_scores, release_caffemodel

from deeplabv1.checkpoint import model_from_checkpoint
from deeplabv1.cli import main
from deeplabv1.convert.caffe_proto import read_caffemodel
from deeplabv1.data.caffe_input import to_caffe_input
from deeplabv1.data.palette import read_label_png
from deeplabv1.evaluate.config import EvalConfig
from deeplabv1.evaluate.evaluator import saved_scores
from deeplabv1.evaluate.run import run_eval
from deeplabv1.models.inference import predict_scores
from deeplabv1.predict.segmenter import Segmenter

WIDTH = 1 / 32
IMAGES = {  # one real VOC image per variant (portrait and landscape, different sizes)
    "deeplab": "2007_000129",
    "deeplab-msc": "2007_000033",
    "deeplab-largefov": "2007_000346",
    "deeplab-msc-largefov": "2007_001288",
}


TOL = 5e-6  # of the largest |score|: float32 against the float64 reference (seen: < 1e-6)


def assert_same_map(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    """Scores (C, H, W) equal to float tolerance; argmax identical except at near ties."""
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    print(f"{what}: max relative error {err:.2e}")
    assert err < TOL, f"{what}: scores differ by {err:.2e} of the largest score"
    assert_same_labels(ours.argmax(0), ref, what)


def assert_same_labels(labels: np.ndarray, ref: np.ndarray, what: str) -> None:
    """Identical argmax wherever the reference's two best scores differ by more than twice the
    score tolerance (closer ties can go either way within it)."""
    top2 = np.sort(ref, axis=0)[-2:]
    decided = (top2[1] - top2[0]) > 2 * TOL * np.abs(ref).max()
    assert decided.mean() > 0.998, f"{what}: too many near ties to compare labels"
    assert labels.shape == ref.shape[1:]
    assert np.array_equal(labels[decided], ref.argmax(0)[decided]), f"{what}: labels differ"


@pytest.fixture(scope="module", params=list(VARIANTS))
def released(request, shared_data, tmp_path_factory):
    """One variant's converted release-layout model, its real image and the reference map."""
    variant = request.param
    tmp = tmp_path_factory.mktemp(variant)
    test_net = phase_layers(read_release(variant, "test"), "TEST")
    train_net = phase_layers(read_release(variant, "train"), "TRAIN")
    weights = random_weights(test_net, WIDTH, np.random.default_rng(7))
    caffemodel = tmp / "train_iter_6000.caffemodel"
    caffemodel.write_bytes(release_caffemodel(train_net, weights, VARIANTS[variant]))
    ckpt = tmp / "model.pt"
    assert main(["convert", "--from", "caffe", str(caffemodel), "--arch", variant,
                 "-o", str(ckpt)]) == 0  # fmt: skip
    sid = IMAGES[variant]
    rgb = np.asarray(Image.open(shared_data / "voc_samples" / f"{sid}.png").convert("RGB"))
    ref = reference_scores(test_net, weights, rgb)
    return SimpleNamespace(variant=variant, ckpt=ckpt, sid=sid, rgb=rgb, ref=ref, tmp=tmp,
                           caffemodel=caffemodel, train_net=train_net, samples=shared_data
                           / "voc_samples")  # fmt: skip


def test_the_caffemodel_reads_in_the_forks_names(released):
    """Layer names and types of the V1 file, as the fork's caffe.proto names them (39 is
    IMAGE_SEG_DATA there, not upstream Caffe's DECONVOLUTION)."""
    _, layers = read_caffemodel(released.caffemodel)
    assert [(ly.name, ly.type) for ly in layers] == [
        (spec.one("name"), spec.one("type")) for spec in released.train_net
    ]
    types = {ly.type for ly in layers}
    assert {"IMAGE_SEG_DATA", "INTERP", "SEG_ACCURACY", "SOFTMAX_LOSS"} <= types
    assert FORK_LAYER_TYPES["IMAGE_SEG_DATA"] == 39


def test_segmenter_predict_is_the_release_map(released):
    result = Segmenter.from_checkpoint(released.ckpt).predict(released.rgb)
    assert_same_map(result.scores, released.ref, f"{released.variant} Segmenter.predict")
    assert np.array_equal(result.labels, result.scores.argmax(0))


def test_predict_scores_is_the_release_map(released):
    model = model_from_checkpoint(released.ckpt).eval()
    x = to_caffe_input(released.rgb)[None]
    scores = predict_scores(model, x, test_size=513)[0].numpy()
    assert_same_map(scores, released.ref, f"{released.variant} predict_scores")


def test_eval_is_the_release_map(released):
    variant, ckpt, sid, ref, tmp = (released.variant, released.ckpt, released.sid, released.ref,
                                    released.tmp)  # fmt: skip
    root = tmp / "voc"
    for folder, name in (("JPEGImages", f"{sid}.png"), ("SegmentationClass", f"{sid}_label.png")):
        (root / folder).mkdir(parents=True)
        shutil.copy(released.samples / name, root / folder / f"{sid}.png")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text(sid + "\n")
    cfg = EvalConfig(weights=str(ckpt), data=str(root), split="val", save_predictions=True,
                     save_scores=str(tmp / "scores"), progress=False, device="cpu",
                     out=str(tmp / "eval"))  # fmt: skip
    results = run_eval(cfg)
    assert results["num_images"] == 1
    labels = read_label_png(tmp / "eval" / "predictions" / "network" / f"{sid}.png", None)
    assert_same_labels(labels, ref, f"{variant} eval")
    # the saved score maps give the same full-resolution map back
    from deeplabv1.data.datasets import voc_dataset

    ((_, scores, _, _),) = saved_scores(tmp / "scores", voc_dataset(root, "val"), [0])
    assert_same_map(scores.numpy(), ref, f"{variant} eval --save-scores")


def test_predict_command_is_the_release_map(released):
    image, out = released.samples / f"{released.sid}.png", released.tmp / "pred"
    assert main(["predict", str(image), "--weights", str(released.ckpt), "-o", str(out)]) == 0
    labels = read_label_png(out / f"{released.sid}_net.png", None)
    assert_same_labels(labels, released.ref, f"{released.variant} deeplabv1 predict")


def test_the_old_procedure_is_not_the_release_map(released):
    """The check can fail: the training geometry at test time misses the release's map."""
    rgb = released.rgb
    if released.variant == "deeplab-largefov":
        pytest.skip("LargeFOV's test network is its training network")
    model = model_from_checkpoint(released.ckpt).eval()
    x = torch.nn.functional.pad(to_caffe_input(rgb)[None], (0, 513 - rgb.shape[1], 0,
                                                             513 - rgb.shape[0]))  # fmt: skip
    with torch.no_grad():
        coarse = model(x)  # the training network's stride-8 map
    full = torch.nn.functional.interpolate(coarse, size=((coarse.shape[-2] - 1) * 8 + 1,) * 2,
                                           mode="bilinear", align_corners=True)  # fmt: skip
    old = torch.nn.functional.pad(full, (0, 8, 0, 8), mode="replicate")[
        0, :, : rgb.shape[0], : rgb.shape[1]
    ]
    with pytest.raises(AssertionError):
        assert_same_map(old.numpy(), released.ref, "old")
