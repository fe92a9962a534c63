"""What an MSc run trains: the recipe's freeze (trunk frozen, branches trained, fc8 per
``msc_train_fc8``) never freezes a layer that holds random weights. A classifier re-initialised
for other classes, and a trunk without a checkpoint, are trained in every variant and with every
``msc_train_fc8``, in stage 1 and in the end-to-end CRF stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deeplabv1.checkpoint import load_checkpoint, save_checkpoint
from deeplabv1.cli import main
from deeplabv1.data.synth import make_synthetic_folder
from deeplabv1.models import build_model
from deeplabv1.train.build import build_training_model
from deeplabv1.train.config import TrainConfig
from deeplabv1.train.optim import build_optimizer

WIDTH = 0.0625
NAMES = ["background", "cat", "dog", "heron", "fish"]
TINY = ["--width", str(WIDTH), "--crop-size", "33", "--batch-size", "1", "--workers", "0",
        "--progress", "false", "--tensorboard", "false", "--log-every", "1",
        "--checkpoint-every", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A plain folder with 5 named classes, as a user's own dataset."""
    return make_synthetic_folder(tmp_path_factory.mktemp("mine"), 4, size=(40, 36), classes=NAMES)


def _checkpoint(folder: Path, arch: str, num_classes: int, names=None) -> Path:
    """A trained-looking checkpoint of ``arch``: every weight set away from any fresh init."""
    model = build_model(arch, width=WIDTH, num_classes=num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.05, 0.05)
    path = folder / f"{arch}-{num_classes}-{'named' if names else 'plain'}.pt"
    save_checkpoint(path, model.state_dict(), arch=arch, num_classes=num_classes, width=WIDTH,
                    model_kwargs=model.model_kwargs, class_names=names)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def inits(tmp_path_factory) -> dict[str, Path]:
    """A 21-class VOC-like LargeFOV model (other classes: fc8 re-initialised) and a 5-class
    model with the dataset's own names (same classes: fc8 copied), as LargeFOV and as MSc."""
    tmp = tmp_path_factory.mktemp("inits")
    return {"voc": _checkpoint(tmp, "deeplab-largefov", 21),
            "same": _checkpoint(tmp, "deeplab-largefov", 5, NAMES),
            "voc-msc": _checkpoint(tmp, "deeplab-msc", 21),
            "same-msc": _checkpoint(tmp, "deeplab-msc", 5, NAMES)}  # fmt: skip


def _groups(model, cfg) -> dict[str, float]:
    """``{parameter name: lr_mult}`` over the optimizer's parameter groups."""
    return {n: g["lr_mult"] for g in build_optimizer(model, cfg).param_groups for n in g["names"]}


@pytest.mark.parametrize("arch", ["deeplab-msc", "deeplab-msc-largefov", "deeplab-largefov",
                                  "deeplab"])  # fmt: skip
@pytest.mark.parametrize("train_fc8", [None, False, True])
@pytest.mark.parametrize("renewed", [True, False])
def test_a_reinitialised_fc8_is_in_the_optimizer(data, inits, arch, train_fc8, renewed):
    msc = "msc" in arch
    source = ("voc" if renewed else "same") + ("-msc" if arch == "deeplab-msc" else "")
    if arch == "deeplab":
        source = "voc" if renewed else "same"  # DeepLab's trunk differs from LargeFOV's
        inits = {source: _checkpoint(data.parent, "deeplab", 21 if renewed else 5,
                                     None if renewed else NAMES)}  # fmt: skip
    cfg = TrainConfig(arch=arch, width=WIDTH, init=str(inits[source]), data_root=str(data),
                      msc_train_fc8=train_fc8)  # fmt: skip
    model, notes = build_training_model(cfg)
    ckpt = load_checkpoint(inits[source])["model"]
    assert torch.equal(model.fc8.weight, ckpt["fc8.weight"]) != renewed  # the case under test
    mults = _groups(model, cfg)
    fc8_trained = renewed or not msc or cfg.resolved_msc_train_fc8()
    assert ("fc8.weight" in mults and "fc8.bias" in mults) == fc8_trained
    if fc8_trained:  # the release's multipliers: MSc classifiers x1 (bias x2), plain fc8 x10
        assert (mults["fc8.weight"], mults["fc8.bias"]) == ((1.0, 2.0) if msc else (10.0, 20.0))
    trunk = {n for n, _ in model.named_parameters()
             if n.split(".")[0] not in ("fc8", *model.msc_layer_names)}  # fmt: skip
    assert not (trunk & set(mults)) if msc else trunk <= set(mults)
    if msc:
        state = "trained" if fc8_trained else "frozen"
        assert notes[-1].startswith(f"MSc: trunk frozen, branches trained, fc8 {state}")
        assert ("because it was re-initialised" in notes[-1]) == (
            renewed and not cfg.resolved_msc_train_fc8()
        )


@pytest.mark.parametrize("arch", ["deeplab-msc", "deeplab-msc-largefov"])
def test_without_a_checkpoint_nothing_random_is_frozen(data, arch):
    cfg = TrainConfig(arch=arch, width=WIDTH, data_root=str(data), msc_train_fc8=False)
    model, notes = build_training_model(cfg)
    assert set(_groups(model, cfg)) == {n for n, _ in model.named_parameters()}
    assert notes[-1].startswith("MSc: every layer trained (the trunk is not from a checkpoint")


def _train(capsys, data: Path, out: Path, init: Path, *extra: str) -> tuple[dict, dict, str]:
    """Train 3 iterations of MSc-LargeFOV from ``init``; (weights before, after, printed log)."""
    argv = ["train", "--data-root", str(data), "--val-fraction", "0.25", "--arch",
            "deeplab-msc-largefov", "--max-iter", "3", "--init", str(init), "--out-dir",
            str(out), *TINY, *extra]  # fmt: skip
    assert main(argv) == 0
    cfg = TrainConfig(arch="deeplab-msc-largefov", width=WIDTH, init=str(init),
                      data_root=str(data))  # fmt: skip
    before = build_training_model(cfg)[0].state_dict()  # the run's start: same seed
    return before, load_checkpoint(out / "final.pt")["model"], capsys.readouterr().out


@pytest.mark.parametrize("source", ["voc", "same"])
def test_msc_largefov_from_a_voc_model_trains_its_new_classifier(
    data, inits, tmp_path, capsys, source
):
    """The review's case: a 21-class model into MSc-LargeFOV on a 5-class dataset."""
    before, after, log = _train(capsys, data, tmp_path / "run", inits[source])
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    branches = set(build_model("deeplab-msc-largefov", width=WIDTH).msc_layer_names)
    assert changed & branches and not changed - branches - {"fc8"}  # trunk frozen
    assert ("fc8" in changed) == (source == "voc")  # trained exactly when re-initialised
    fc8 = "fc8 trained at x1" if source == "voc" else "fc8 frozen"
    assert f"MSc: trunk frozen, branches trained, {fc8}" in log


@pytest.mark.slow
def test_the_crf_stage_trains_what_stage_1_trained(data, inits, tmp_path, capsys):
    """The end-to-end CRF stage keeps stage 1's freeze, re-initialised fc8 included."""
    for source in ("voc", "same"):
        out = tmp_path / source
        _, stage1, log = _train(capsys, data, out, inits[source], "--crf", "end-to-end",
                                "--crf-max-iter", "2", "--crf-checkpoint-every", "0")  # fmt: skip
        joint = load_checkpoint(out / "crf" / "final.pt")["model"]
        changed = {k.split(".")[0] for k in stage1 if not torch.equal(stage1[k], joint[k])}
        branches = set(build_model("deeplab-msc-largefov", width=WIDTH).msc_layer_names)
        assert changed & branches and not changed - branches - {"fc8"}, source
        assert ("fc8" in changed) == (source == "voc"), source
        fc8 = "trained" if source == "voc" else "frozen"
        assert f"as in stage 1: trunk frozen, branches trained, fc8 {fc8}" in log
