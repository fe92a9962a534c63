"""The JSONL log, its crash handling, and TensorBoard scalars (through a stand-in writer)."""

from __future__ import annotations

import json

from deeplabv1.train import logger as logmod
from deeplabv1.train.logger import TrainLogger, read_log, truncate_log


class _Writer:
    def __init__(self):
        self.scalars = []
        self.closed = False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


def test_log_lines_tensorboard_scalars_and_crash_truncation(tmp_path, monkeypatch):
    writer = _Writer()
    monkeypatch.setattr(logmod, "_summary_writer", lambda log_dir: writer)
    log = TrainLogger(tmp_path, start_iter=0, max_iter=4, progress=True, tensorboard=True)
    for it in (2, 4):
        log.log({"iter": it, "loss": 1.0 / it, "lr": 1e-3, "images_per_s": 5.0, "time": it})
    log.close()
    records = read_log(tmp_path / "log.jsonl")
    assert [r["iter"] for r in records] == [2, 4] and records[1]["loss"] == 0.25
    assert ("train/loss", 0.5, 2) in writer.scalars and ("train/lr", 1e-3, 4) in writer.scalars
    assert len(writer.scalars) == 8 and writer.closed
    # a crash mid-line leaves a partial record: reading stops there
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"iter": 6, "lo')
    assert [r["iter"] for r in read_log(tmp_path / "log.jsonl")] == [2, 4]
    truncate_log(tmp_path / "log.jsonl", 2)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["iter"] for line in lines] == [2]


def test_without_tensorboard_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(logmod, "_summary_writer", lambda log_dir: None)
    log = TrainLogger(tmp_path, start_iter=3, max_iter=5, progress=False, tensorboard=True)
    log.log({"iter": 5, "loss": 0.1, "lr": 1e-4, "images_per_s": 1.0, "time": 0.5})
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".deeplabv1-outputs", "log.jsonl"]
