"""Under torchrun an error is printed once, by rank 0, not once per rank.

Two gloo processes started the way torchrun starts them (``gloo_helpers``), their stderr
captured at the file-descriptor level.
"""

from __future__ import annotations

import re

import pytest
import torch
from gloo_helpers import spawn

from deeplabv1.checkpoint import save_checkpoint
from deeplabv1.cli import main, report_error
from deeplabv1.data.synth import make_synthetic_voc
from deeplabv1.distributed import context
from deeplabv1.distributed.work import GroupError
from deeplabv1.errors import DeepLabError
from deeplabv1.models import build_model


def _expect(rank: int, world: int, argv: list[str], status: int) -> None:
    got = main(argv)
    if got != status:
        raise SystemExit(f"rank {rank}: exit {got}, expected {status}")


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error" in line]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    voc = make_synthetic_voc(root / "voc", 4, size=(40, 32), num_classes=3, seed=1)
    model = build_model("deeplab-largefov", num_classes=3, width=1 / 16)
    save_checkpoint(root / "model.pt", model.state_dict(), arch=model.arch, num_classes=3,
                    width=model.width, model_kwargs=model.model_kwargs)  # fmt: skip
    return root, voc


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing weights", "nope.pt: checkpoint file not found"),  # found after joining
        ("bad flag value", "--test-size"),  # found before joining
        ("wrong dataset", "no-such-data"),
    ],
)
def test_an_error_every_rank_has_is_printed_once(data, tmp_path, capfd, case, message):
    root, voc = data
    argv = ["eval", "--weights", str(root / "model.pt"), "--data", str(voc), "--split",
            "trainval", "--device", "cpu", "--progress", "false",
            "-o", str(tmp_path / "e")]  # fmt: skip
    if case == "missing weights":
        argv[2] = str(tmp_path / "nope.pt")
    elif case == "bad flag value":
        argv += ["--test-size", "-5"]
    else:
        argv[4] = str(tmp_path / "no-such-data")
    spawn(_expect, 2, argv, 2)
    lines = error_lines(capfd.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith("deeplabv1 eval: error: ") and message in lines[0], lines
    assert not re.search(r"\brank \d", lines[0])  # no rank names: every rank had it


def test_other_ranks_print_only_their_own_errors(monkeypatch, capsys):
    """Rank 1 of 2: silent for an error every rank has, its own line for one only it has."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(context, "_JOINED", [True])
    report_error("eval", "x.png: unreadable", GroupError("x.png: unreadable"))
    assert capsys.readouterr().err == ""
    report_error("eval", "out/a.png: No space left on device", OSError())
    err = capsys.readouterr().err
    assert err == "deeplabv1 eval (rank 1): error: out/a.png: No space left on device\n"
    monkeypatch.setattr(context, "_JOINED", [False])  # before joining: every rank checks the same
    monkeypatch.setenv("LOCAL_RANK", "1")  # ... files too, on the same machine
    report_error("eval", "--test-size must be >= 0", DeepLabError("--test-size must be >= 0"))
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("LOCAL_RANK", "0")  # the first process of another machine: its files
    report_error("eval", "data/VOC2012: not found", DeepLabError("data/VOC2012: not found"))
    assert capsys.readouterr().err == "deeplabv1 eval (rank 1): error: data/VOC2012: not found\n"
    monkeypatch.setenv("RANK", "0")
    report_error("eval", "x.png: unreadable", GroupError("x.png: unreadable"))
    assert capsys.readouterr().err == "deeplabv1 eval: error: x.png: unreadable\n"


def _different_errors(rank: int, world: int) -> None:
    from deeplabv1.distributed.context import distributed_session
    from deeplabv1.distributed.work import on_every_rank

    def fail():
        raise DeepLabError(f"image_{rank}.png: unreadable" if rank else "nope.pt: not found")

    with distributed_session("cpu") as dist:
        try:
            on_every_rank(fail, dist, "eval")
        except GroupError as exc:
            torch.save(str(exc), f"{__import__('os').environ['ERRORS_OUT']}/{rank}.pt")


def test_a_shared_error_names_the_ranks_only_when_they_differ(tmp_path, monkeypatch):
    monkeypatch.setenv("ERRORS_OUT", str(tmp_path))
    spawn(_different_errors, 2)
    got = {torch.load(tmp_path / f"{r}.pt") for r in (0, 1)}
    assert got == {"eval: 2 processes failed: rank 0: nope.pt: not found; "
                   "rank 1: image_1.png: unreadable"}  # fmt: skip


def test_a_train_setting_every_rank_rejects_is_printed_once(data, tmp_path, capfd):
    """A batch the processes do not divide: the same check fails on every rank."""
    root, voc = data
    argv = ["train", "--data-root", str(voc), "--split", "trainval", "--width", "0.0625",
            "--max-iter", "1", "--crop-size", "41", "--batch-size", "3", "--device", "cpu",
            "--progress", "false", "--out-dir", str(tmp_path / "t")]  # fmt: skip
    spawn(_expect, 2, argv, 2)
    lines = error_lines(capfd.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith("deeplabv1 train: error: ") and "not divisible" in lines[0], lines
