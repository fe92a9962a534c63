"""DDP on the CPU (gloo, 2 processes) matches one process with the same global batch.

The two processes are started the way torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT in the environment, ``env://``) and run the ``deeplabv1 train`` command line.
torch.multiprocessing is used instead of a torchrun subprocess only because torchrun's
standalone rendezvous adds about 8 s.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch

from deeplabv1.checkpoint import load_checkpoint
from deeplabv1.train.config import TrainConfig
from deeplabv1.train.logger import read_log
from deeplabv1.train.loop import train

SETTINGS = dict(arch="deeplab-largefov", width=0.0625, split="train", crop_size=41,
                batch_size=4, max_iter=4, base_lr=1e-3, step_size=3, dropout=0.0,
                checkpoint_every=2, log_every=1, workers=0, progress=False,
                tensorboard=False, device="cpu")  # fmt: skip


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from deeplabv1.data.synth import make_synthetic_voc

    return make_synthetic_voc(tmp_path_factory.mktemp("synth_ddp"), 8, size=(56, 48), seed=1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, argv: list[str]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from deeplabv1.cli import main

    status = main(argv)
    if status != 0:
        raise SystemExit(status)


def _flags(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        out += ["--" + key.replace("_", "-"), str(value)]
    return out


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(synth_root, tmp_path):
    single = train(TrainConfig(**SETTINGS, data_root=str(synth_root), out_dir=str(tmp_path / "1")))
    # 2 processes x iter_size 2: micro-batches of one image, gradients accumulated and all-reduced
    argv = ["train", *_flags({**SETTINGS, "iter_size": 2, "data_root": synth_root,
                              "out_dir": tmp_path / "2"})]  # fmt: skip
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), argv), nprocs=2, join=True)
    a, b = load_checkpoint(single), load_checkpoint(tmp_path / "2" / "final.pt")
    assert b["world_size"] == 2 and len(b["rng"]) == 2 and b["data_position"] == 16
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-4, atol=1e-6)
    moved = a["model"]["fc8.weight"] - load_checkpoint(tmp_path / "1" / "checkpoint_000002.pt")[
        "model"]["fc8.weight"]
    assert moved.abs().max() > 1e-4  # training really changed the weights
    # the logged loss is the loss of the whole global batch in both runs
    la, lb = read_log(tmp_path / "1" / "log.jsonl"), read_log(tmp_path / "2" / "log.jsonl")
    assert [r["iter"] for r in lb] == [1, 2, 3, 4]
    assert [r["loss"] for r in lb] == pytest.approx([r["loss"] for r in la], rel=1e-5)
    # only rank 0 wrote checkpoints and logs
    assert sorted(p.name for p in (tmp_path / "2").iterdir()) == [
        ".deeplabv1-outputs", ".deeplabv1.lock", "checkpoint_000002.pt", "config.yaml",
        "final.pt", "log.jsonl"]
