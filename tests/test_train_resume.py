"""Exact resume on the CPU: 20 iterations straight == 10 + resume + 10, bit for bit (dropout on)."""

from __future__ import annotations

import shutil

import pytest
import torch

from deeplabv1.checkpoint import load_checkpoint, model_from_checkpoint
from deeplabv1.config import load_yaml
from deeplabv1.errors import DeepLabError
from deeplabv1.rundir import LOCK_NAME
from deeplabv1.train.config import TrainConfig
from deeplabv1.train.logger import read_log
from deeplabv1.train.loop import train


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from deeplabv1.data.synth import make_synthetic_voc

    return make_synthetic_voc(tmp_path_factory.mktemp("synth"), 10, size=(56, 48), seed=0)


def _cfg(root, out, **kw) -> TrainConfig:
    base = dict(arch="deeplab-largefov", width=0.0625, data_root=str(root), split="train",
                crop_size=41, batch_size=4, iter_size=2, max_iter=20, base_lr=1e-3,
                step_size=7, checkpoint_every=10, keep_checkpoints=0, log_every=1,
                out_dir=str(out), workers=0, progress=False, tensorboard=False)
    base.update(kw)
    return TrainConfig(**base)


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_gives_bit_identical_weights(synth_root, tmp_path):
    straight = train(_cfg(synth_root, tmp_path / "a"))
    a = load_checkpoint(straight)
    assert a["iteration"] == 20 and a["data_position"] == 80
    mid = tmp_path / "a" / "checkpoint_000010.pt"
    assert mid.is_file()
    # resume from the mid-run checkpoint into a fresh folder, with 2 loader workers this time
    resumed = train(_cfg(synth_root, tmp_path / "b", resume=str(mid), workers=2))
    b = load_checkpoint(resumed)
    _assert_same_state(a["model"], b["model"])
    # the optimizer momentum buffers too
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    # dropout was active: a run with another seed ends elsewhere
    other = load_checkpoint(train(_cfg(synth_root, tmp_path / "c", seed=1)))
    assert not torch.equal(other["model"]["fc8.weight"], a["model"]["fc8.weight"])
    # the final checkpoint builds the model
    net = model_from_checkpoint(straight)
    assert net.arch == "deeplab-largefov" and net.width == 0.0625


def test_crash_and_auto_resume_in_place_keeps_one_clean_log(synth_root, tmp_path):
    out = tmp_path / "run"
    train(_cfg(synth_root, out, max_iter=10, checkpoint_every=5))
    first = load_checkpoint(out / "final.pt")
    records = read_log(out / "log.jsonl")
    assert [r["iter"] for r in records] == list(range(1, 11))
    assert {"iter", "loss", "lr", "images_per_s", "time"} <= set(records[0])
    # simulate a crash after iteration 7: drop the final checkpoint, keep log lines past 5
    (out / "final.pt").unlink()
    final = train(_cfg(synth_root, out, max_iter=10, checkpoint_every=5, resume="auto"))
    _assert_same_state(first["model"], load_checkpoint(final)["model"])
    again = read_log(out / "log.jsonl")
    assert [r["iter"] for r in again] == list(range(1, 11))
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in records], rel=0,
                                                       abs=0)
    # extending a finished run: auto picks final.pt (iteration 10) and continues to 12
    longer = load_checkpoint(train(_cfg(synth_root, out, max_iter=12, checkpoint_every=5,
                                        resume="auto")))
    assert longer["iteration"] == 12
    # config.yaml stays the record of how the run started; the checkpoint holds its own
    assert load_yaml(out / "config.yaml")["max_iter"] == 10
    assert longer["config"]["max_iter"] == 12
    # lr of the logged iterations follows the step policy (step_size 7)
    lrs = {r["iter"]: r["lr"] for r in read_log(out / "log.jsonl")}
    assert lrs[7] == pytest.approx(1e-3) and lrs[8] == pytest.approx(1e-4)


def test_a_run_diverging_between_log_lines_writes_no_checkpoint(synth_root, tmp_path):
    """The loss is checked only on log lines: a run that diverged between them wrote periodic
    checkpoints and a final.pt of NaN weights (which predict and eval then refuse) and
    `--resume auto` continued from them. Now it stops at the first such checkpoint."""
    out = tmp_path / "run"
    with pytest.raises(DeepLabError, match="training diverged: weights hold NaN or infinite "
                                           "values at iteration 2 .*no checkpoint written"):
        train(_cfg(synth_root, out, base_lr=1e30, max_iter=12, log_every=100,
                   checkpoint_every=2))  # fmt: skip
    assert not list(out.glob("*.pt"))
    with pytest.raises(DeepLabError, match="diverged: weights hold NaN .* at iteration 1 "):
        train(_cfg(synth_root, tmp_path / "one", base_lr=1e37, max_iter=1, iter_size=1))
    assert not (tmp_path / "one" / "final.pt").exists()


def test_resume_rejects_a_plain_model_checkpoint(synth_root, tmp_path):
    out = tmp_path / "x"
    final = train(_cfg(synth_root, out, max_iter=1, checkpoint_every=0))
    ckpt = load_checkpoint(final)
    from deeplabv1.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "plain.pt", ckpt["model"], arch=ckpt["arch"], num_classes=21,
                    width=ckpt["width"])
    with pytest.raises(DeepLabError, match="not a resumable"):
        train(_cfg(synth_root, tmp_path / "y", resume=str(tmp_path / "plain.pt")))
    # but it initialises a new run
    shutil.rmtree(tmp_path / "y", ignore_errors=True)
    train(_cfg(synth_root, tmp_path / "y", max_iter=1, init=str(tmp_path / "plain.pt")))


def test_end_to_end_crf_stage_starts_from_the_final_checkpoint(synth_root, tmp_path, monkeypatch):
    from deeplabv1.train import crf_finetune

    calls = []
    monkeypatch.setattr(crf_finetune, "finetune_crf",
                        lambda cfg, stage1: calls.append((cfg.crf_max_iter, stage1)) or "crf.pt")
    out = tmp_path / "e2e"
    assert train(_cfg(synth_root, out, max_iter=1, crf="end-to-end", crf_max_iter=3)) == "crf.pt"
    assert calls == [(3, out / "final.pt")]
    assert train(_cfg(synth_root, tmp_path / "plain", max_iter=1)) == tmp_path / "plain/final.pt"
    assert len(calls) == 1


def test_resume_with_other_settings_is_refused_and_keeps_the_record(synth_root, tmp_path):
    """A resumed run must train as its checkpoint did: settings that change the result are
    refused in one line listing them; config.yaml, the record of the run, is never rewritten;
    a checkpoint past --max-iter is refused; output and loader settings may change."""
    out = tmp_path / "run"
    train(_cfg(synth_root, out, max_iter=4, checkpoint_every=2))
    ckpt = out / "checkpoint_000002.pt"
    record = (out / "config.yaml").read_bytes()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name.endswith(".pt")}
    changed = {"batch_size": 2, "iter_size": 1, "base_lr": 1e-2, "seed": 3}
    with pytest.raises(DeepLabError) as err:
        train(_cfg(synth_root, out, max_iter=4, checkpoint_every=2, resume="auto", **changed))
    msg = str(err.value)
    assert "\n" not in msg and str(out / "final.pt") in msg
    assert all(f"{key} " in msg for key in changed), msg
    with pytest.raises(DeepLabError, match="is at iteration 2, past --max-iter 1"):
        train(_cfg(synth_root, tmp_path / "other", max_iter=1, resume=str(ckpt)))
    assert not (tmp_path / "other").exists()
    assert (out / "config.yaml").read_bytes() == record
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name.endswith(".pt")} == before
    # what does not change the result: loader workers, logging, checkpointing, a longer run
    final = train(_cfg(synth_root, out, max_iter=6, checkpoint_every=3, resume=str(ckpt),
                       workers=2, log_every=2))  # fmt: skip
    assert load_checkpoint(final)["iteration"] == 6
    assert (out / "config.yaml").read_bytes() == record


def _files(folder) -> dict[str, bytes]:
    """The run's files and their bytes (not the lock, which names the last run to take it)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != LOCK_NAME}


def _damage(path, how: str) -> bytes:
    """Damage a checkpoint as a failed copy or a disk error would; return its new bytes."""
    data = path.read_bytes()
    damaged = data[: len(data) // 3] if how == "truncated" else b"\x13garbage\x00" * 999
    path.write_bytes(damaged)
    return damaged


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_auto_resume_passes_over_a_damaged_newest_checkpoint(synth_root, tmp_path, capsys, how):
    """A crash after iteration 6 whose newest checkpoint is damaged: `resume: auto` says which
    file is unreadable and why, continues from the one before exactly as an explicit resume
    from it does, and neither writes over nor prunes the damaged file."""
    out = tmp_path / "run"
    train(_cfg(synth_root, out, max_iter=8, checkpoint_every=2))
    (out / "final.pt").unlink()
    newest, previous = out / "checkpoint_000006.pt", out / "checkpoint_000004.pt"
    explicit = load_checkpoint(train(_cfg(synth_root, tmp_path / "ref", max_iter=8,
                                          checkpoint_every=2, resume=str(previous))))
    damaged = _damage(newest, how)
    capsys.readouterr()
    final = train(_cfg(synth_root, out, max_iter=8, checkpoint_every=2, keep_checkpoints=1,
                       resume="auto"))  # fmt: skip
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if "note:" in line]
    why = "the file is damaged or cut short" if how == "truncated" else "not a PyTorch file"
    assert len(notes) == 1 and f"{newest}: not a deeplabv1 checkpoint: {why}" in notes[0]
    assert f"resuming from {previous} instead" in notes[0]
    assert f"resumed from {previous} at iteration 4" in captured.out
    assert newest.read_bytes() == damaged  # never written over, nor pruned (keep 1)
    assert not (out / "checkpoint_000002.pt").exists()  # pruning goes on around it
    resumed = load_checkpoint(final)
    _assert_same_state(explicit["model"], resumed["model"])
    for pa, pb in zip(explicit["optimizer"]["state"].values(),
                      resumed["optimizer"]["state"].values()):  # fmt: skip
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    assert (resumed["iteration"], resumed["data_position"]) == (8, 32)
    assert [r["iter"] for r in read_log(out / "log.jsonl")] == list(range(1, 9))


def test_auto_resume_with_nothing_readable_or_a_damaged_final(synth_root, tmp_path):
    """A damaged final.pt would be written over by the resumed run: refused before any work
    unless --overwrite. An explicit --resume of a damaged file stays an error naming it. No
    checkpoint loads: one error naming the folder. Nothing is written in any of these."""
    out = tmp_path / "run"
    train(_cfg(synth_root, out, max_iter=4, checkpoint_every=2))
    final, mid = out / "final.pt", out / "checkpoint_000002.pt"
    damaged = _damage(final, "truncated")
    with pytest.raises(DeepLabError) as err:
        train(_cfg(synth_root, out, max_iter=4, checkpoint_every=2, resume="auto"))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{final}: not a deeplabv1 checkpoint")
    assert f"resuming from {mid}" in msg and "--overwrite" in msg
    copy = shutil.copytree(out, tmp_path / "copy")  # --overwrite: resumed, final.pt replaced
    done = train(_cfg(synth_root, copy, max_iter=4, checkpoint_every=2, resume="auto",
                      overwrite=True))  # fmt: skip
    assert load_checkpoint(done)["iteration"] == 4

    _damage(mid, "garbage")
    before = _files(out)
    with pytest.raises(DeepLabError, match=f"^{mid}: not a deeplabv1 checkpoint: not a PyTorch"):
        train(_cfg(synth_root, tmp_path / "other", max_iter=4, resume=str(mid)))
    with pytest.raises(DeepLabError) as err:
        train(_cfg(synth_root, out, max_iter=4, checkpoint_every=2, resume="auto"))
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{out}: nothing to resume from: none of its 2 checkpoints loads")
    assert final.read_bytes() == damaged
    assert _files(out) == before
