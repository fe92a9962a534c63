"""The joint CRF stage resumes exactly, survives a crash, and keeps the MSc trunk frozen."""

from __future__ import annotations

import itertools

import pytest
import torch

from deeplabv1.checkpoint import load_checkpoint
from deeplabv1.errors import DeepLabError
from deeplabv1.train import crf_finetune
from deeplabv1.train.config import TrainConfig
from deeplabv1.train.logger import read_log
from deeplabv1.train.loop import train

NUM_CLASSES = 3
EXACT_KEYS = ("iter", "loss", "lr", "crf_w1", "crf_w2")  # time and images/s vary


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from deeplabv1.data.synth import make_synthetic_voc

    return make_synthetic_voc(tmp_path_factory.mktemp("synth"), 6, size=(56, 48), seed=0,
                              num_classes=NUM_CLASSES)  # fmt: skip


def _cfg(root, out, **kw) -> TrainConfig:
    # crf_dropout on: the global RNG drives the stage, so its restoration is tested too
    base = dict(arch="deeplab-largefov", num_classes=NUM_CLASSES, width=1 / 16,
                data_root=str(root), split="train", crop_size=41, batch_size=2, max_iter=1,
                checkpoint_every=2, crf_checkpoint_every=2, keep_checkpoints=0, log_every=1,
                out_dir=str(out),
                workers=0, progress=False, tensorboard=False, device="cpu", crf="end-to-end",
                crf_max_iter=4, crf_lr=0.05, crf_dropout=True)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _exact(records: list[dict]) -> list[tuple]:
    return [tuple(r[k] for k in EXACT_KEYS) for r in records]


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _assert_same_training_state(a: dict, b: dict) -> None:
    _assert_same_tensors(a["model"], b["model"])
    _assert_same_tensors(a["crf_state"], b["crf_state"])
    assert (a["iteration"], a["data_position"]) == (b["iteration"], b["data_position"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for k in sa:
        assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]), k
    assert a["crf"]["w1"] == b["crf"]["w1"] and torch.equal(a["crf"]["compat"], b["crf"]["compat"])


@pytest.fixture(scope="module")
def straight(synth_root, tmp_path_factory):
    """One uninterrupted run: stage 1 (1 iteration) then 4 joint iterations, snapshots at 2."""
    out = tmp_path_factory.mktemp("straight")
    final = train(_cfg(synth_root, out))
    return out, load_checkpoint(final), read_log(out / "crf" / "log.jsonl")


def test_stream_sampler_continues_the_random_sampler_stream():
    """Any window of the stream = the same slice of one RandomSampler stream (the old order)."""
    ref = list(torch.utils.data.RandomSampler(range(7), replacement=True, num_samples=90,
                                              generator=torch.Generator().manual_seed(3)))
    for start, stop in [(0, 90), (0, 7), (5, 40), (33, 64), (64, 90), (90, 90)]:
        got = list(crf_finetune.StreamSampler(7, seed=3, start=start, stop=stop))
        assert got == ref[start:stop] and len(crf_finetune.StreamSampler(7, seed=3, start=start,
                                                                          stop=stop)) == len(got)
    assert sorted(set(ref)) == list(range(7))


def test_snapshots_are_resumable_checkpoints(straight):
    out, final, log = straight
    assert [r["iter"] for r in log] == [1, 2, 3, 4]
    snap = load_checkpoint(out / "crf" / "checkpoint_000002.pt")
    for ckpt, it in ((snap, 2), (final, 4)):
        assert ckpt["stage"] == "crf-end-to-end" and ckpt["iteration"] == it
        assert ckpt["data_position"] == 2 * it and ckpt["stage1_iteration"] == 1
        assert ckpt["source"] == str(out / "final.pt") and len(ckpt["rng"]) == 1
        assert ckpt["crf"]["kind"] == "end-to-end" and ckpt["crf"]["iters"] == 10
        assert set(ckpt["crf_state"]) == {"weights", "compat", "log_std"}
        # the network's (lr_mult, decay_mult) groups: weights, biases, fc8 weight, bias; the CRF
        assert len(ckpt["optimizer"]["param_groups"]) == 5
        assert ckpt["optimizer"]["param_groups"][-1]["names"] == ["crf"]
    assert not (out / "crf" / "checkpoint_000004.pt").exists()  # the end writes final.pt only
    assert not torch.equal(snap["crf_state"]["compat"], final["crf_state"]["compat"])


def test_resume_from_a_snapshot_is_bit_identical(synth_root, tmp_path, straight):
    """2 iterations + resume (into a fresh folder, 2 loader workers) + 2 == 4 straight."""
    out, final, log = straight
    snap = out / "crf" / "checkpoint_000002.pt"
    cfg = _cfg(synth_root, tmp_path / "b", resume=str(snap), workers=2)
    assert crf_finetune.resumes_joint_stage(cfg)
    resumed = train(cfg)  # stage 1 is skipped: no stage-1 output in the new folder
    assert resumed == tmp_path / "b" / "crf" / "final.pt"
    assert not (tmp_path / "b" / "final.pt").exists()
    b = load_checkpoint(resumed)
    _assert_same_training_state(final, b)
    assert b["source"] == str(out / "final.pt")
    assert _exact(read_log(tmp_path / "b" / "crf" / "log.jsonl")) == _exact(log[2:])
    # the layer continues from crf_state (exact), not from the rounded `crf` entry for eval
    tampered = load_checkpoint(snap)
    tampered["crf"] = dict(tampered["crf"], w1=9.0, sa=50.0, compat=torch.zeros(3, 3))
    torch.save(tampered, tmp_path / "tampered.pt")
    again = train(_cfg(synth_root, tmp_path / "t", resume=str(tmp_path / "tampered.pt")))
    _assert_same_training_state(final, load_checkpoint(again))
    # dropout mattered: another seed of the stage ends elsewhere
    other = load_checkpoint(crf_finetune.finetune_crf(_cfg(synth_root, tmp_path / "c", seed=1),
                                                      out / "final.pt"))  # fmt: skip
    assert not torch.equal(other["model"]["fc8.weight"], final["model"]["fc8.weight"])


def _files(folder) -> dict:
    """Every file under ``folder`` (not the lock, nor the list of deeplabv1's files) by path."""
    from deeplabv1.io import OUTPUTS_LIST
    from deeplabv1.rundir import LOCK_NAME

    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (LOCK_NAME, OUTPUTS_LIST)}  # fmt: skip


def test_overwrite_from_another_snapshot_replaces_the_earlier_run(synth_root, tmp_path, straight,
                                                                   monkeypatch):  # fmt: skip
    """`overwrite` with `resume: <another run's joint-stage snapshot>` (stage 1 skipped) replaces
    the earlier run in out_dir as a fresh start does: put back as it was when the stage stops
    before its first checkpoint; else gone, the folder holding the new run only."""
    out, final, log = straight
    run = tmp_path / "run"
    train(_cfg(synth_root, run, seed=1))  # the earlier run: stage 1 and the joint stage
    before = _files(run)
    assert {"config.yaml", "log.jsonl", "final.pt", "crf/checkpoint_000002.pt", "crf/final.pt",
            "crf/log.jsonl"} == before.keys()  # fmt: skip
    cfg = _cfg(synth_root, run, resume=str(out / "crf" / "checkpoint_000002.pt"), overwrite=True)

    def crashing(*args):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(crf_finetune, "full_resolution", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    assert _files(run) == before
    assert not [p.name for p in run.iterdir() if p.name.startswith(".earlier-run")]
    monkeypatch.undo()
    _assert_same_training_state(final, load_checkpoint(train(cfg)))
    assert sorted(_files(run)) == ["config.yaml", "crf/final.pt", "crf/log.jsonl"]
    assert _exact(read_log(run / "crf" / "log.jsonl")) == _exact(log[2:])
    _assert_records(run, cfg)


def _assert_records(run, cfg) -> None:
    """run/config.yaml is cfg's record (the resolved settings this run used)."""
    import yaml

    from deeplabv1.config import config_to_dict

    record = yaml.safe_load((run / "config.yaml").read_text())
    assert record["resume"] == cfg.resume and record["seed"] == cfg.seed
    assert record == yaml.safe_load(yaml.safe_dump(config_to_dict(cfg)))


def test_a_run_starting_with_the_joint_stage_records_its_config(synth_root, tmp_path, straight):
    """Resumed from another run's joint-stage snapshot into a new folder, the run writes its
    config.yaml as a run starting with stage 1 does; ``resume: auto`` then continues its joint
    stage (stage 1 is not trained again) and keeps that record."""
    out, final, log = straight
    run = tmp_path / "fresh"
    cfg = _cfg(synth_root, run, resume=str(out / "crf" / "checkpoint_000002.pt"))
    _assert_same_training_state(final, load_checkpoint(train(cfg)))
    assert sorted(_files(run)) == ["config.yaml", "crf/final.pt", "crf/log.jsonl"]
    _assert_records(run, cfg)
    before = (run / "config.yaml").read_bytes()
    resumed = load_checkpoint(train(_cfg(synth_root, run, resume="auto", crf_max_iter=6)))
    assert (run / "config.yaml").read_bytes() == before
    # stage 1 is not trained again: the joint stage goes on from its own snapshot
    assert sorted(_files(run)) == ["config.yaml", "crf/final.pt", "crf/log.jsonl"]
    assert resumed["iteration"] == 6 and resumed["stage1_iteration"] == final["stage1_iteration"]
    assert [r["iter"] for r in read_log(run / "crf" / "log.jsonl")] == [3, 4, 5, 6]


def test_crash_keeps_earlier_results_and_auto_resume_matches(synth_root, tmp_path, straight,
                                                             monkeypatch):  # fmt: skip
    """A crash in iteration 4 leaves stage 1 and the snapshot; resume: auto finishes exactly."""
    _, final, log = straight
    out = tmp_path / "run"
    calls = itertools.count(1)
    real = crf_finetune.full_resolution

    def crashing(*args):
        if next(calls) == 4:
            raise RuntimeError("simulated crash")
        return real(*args)

    monkeypatch.setattr(crf_finetune, "full_resolution", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(_cfg(synth_root, out))
    monkeypatch.setattr(crf_finetune, "full_resolution", real)
    _assert_same_tensors(load_checkpoint(out / "final.pt")["model"],
                         load_checkpoint(straight[0] / "final.pt")["model"])  # fmt: skip
    assert sorted(p.name for p in (out / "crf").glob("*.pt")) == ["checkpoint_000002.pt"]
    assert load_checkpoint(out / "crf" / "checkpoint_000002.pt")["iteration"] == 2
    assert [r["iter"] for r in read_log(out / "crf" / "log.jsonl")] == [1, 2, 3]

    done = train(_cfg(synth_root, out, resume="auto"))
    _assert_same_training_state(final, load_checkpoint(done))
    assert _exact(read_log(out / "crf" / "log.jsonl")) == _exact(log)  # one clean log
    s1 = load_checkpoint(out / "final.pt")  # stage 1 resumed at its end: ran no iteration
    assert s1["iteration"] == 1
    _assert_same_tensors(s1["model"], load_checkpoint(straight[0] / "final.pt")["model"])

    # a finished stage extends with a longer crf_max_iter
    longer = load_checkpoint(train(_cfg(synth_root, out, resume="auto", crf_max_iter=5)))
    assert longer["iteration"] == 5 and longer["data_position"] == 10
    assert [r["iter"] for r in read_log(out / "crf" / "log.jsonl")] == [1, 2, 3, 4, 5]
    # a longer stage 1 makes the joint-stage checkpoints stale: refused, not silently reused
    with pytest.raises(DeepLabError, match="continues a stage 1 of 1 iterations"):
        train(_cfg(synth_root, out, resume="auto", max_iter=2, crf_max_iter=5))


@pytest.mark.parametrize("arch, fc8_trained", [("deeplab-msc", True),
                                               ("deeplab-msc-largefov", False)])  # fmt: skip
def test_msc_trunk_stays_frozen_in_the_joint_stage(synth_root, tmp_path, arch, fc8_trained):
    from deeplabv1.checkpoint import save_checkpoint
    from deeplabv1.models import build_model

    src = build_model(arch, num_classes=NUM_CLASSES, width=1 / 16)  # a trained network's role
    init = tmp_path / "init.pt"
    save_checkpoint(init, src.state_dict(), arch=arch, num_classes=NUM_CLASSES, width=1 / 16)
    out = tmp_path / arch
    final = train(_cfg(synth_root, out, arch=arch, crf_max_iter=2, checkpoint_every=0,
                       crf_checkpoint_every=0, crf_dropout=False, init=str(init)))  # fmt: skip
    stage1, joint = load_checkpoint(out / "final.pt")["model"], load_checkpoint(final)["model"]
    changed = {k for k in stage1 if not torch.equal(stage1[k], joint[k])}
    msc_layers = build_model(arch, num_classes=NUM_CLASSES, width=1 / 16).msc_layer_names
    branches = {k for k in stage1 if k.split(".")[0] in msc_layers}
    fc8 = {k for k in stage1 if k.startswith("fc8.")}
    trunk = set(stage1) - branches - fc8
    assert trunk and branches and fc8
    assert not changed & trunk  # frozen: bit-identical after the stage
    assert changed & branches
    assert bool(changed & fc8) == fc8_trained
    assert changed <= branches | fc8


def test_auto_resume_passes_over_a_damaged_joint_stage_checkpoint(synth_root, tmp_path, straight,
                                                                   capsys):  # fmt: skip
    """The joint stage chooses its newest checkpoint in crf/ as stage 1 does in its folder: a
    damaged one is named on stderr and kept, and the stage continues from the one before
    exactly (the straight run's result, which an explicit resume from it gives)."""
    _, final, log = straight
    out = tmp_path / "run"
    train(_cfg(synth_root, out, crf_checkpoint_every=1))
    (out / "crf" / "final.pt").unlink()  # a crash after joint iteration 3
    newest, previous = out / "crf" / "checkpoint_000003.pt", out / "crf" / "checkpoint_000002.pt"
    newest.write_bytes(newest.read_bytes()[:4096])
    damaged = newest.read_bytes()
    capsys.readouterr()
    done = train(_cfg(synth_root, out, crf_checkpoint_every=1, resume="auto"))
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "note:" in line]
    assert len(notes) == 1, err
    assert f"{newest}: not a deeplabv1 checkpoint: the file is damaged or cut short" in notes[0]
    assert f"resuming from {previous} instead" in notes[0]
    assert newest.read_bytes() == damaged
    _assert_same_training_state(final, load_checkpoint(done))
    assert _exact(read_log(out / "crf" / "log.jsonl")) == _exact(log)
    # no joint-stage checkpoint loads: an error naming crf/, the damaged files kept
    previous.write_bytes(b"not a checkpoint")
    (out / "crf" / "final.pt").unlink()
    (out / "crf" / "checkpoint_000001.pt").write_bytes(b"")
    with pytest.raises(DeepLabError, match=f"^{out / 'crf'}: nothing to resume from: none of "
                                           "its 3 checkpoints loads"):  # fmt: skip
        train(_cfg(synth_root, out, crf_checkpoint_every=1, resume="auto"))
    assert newest.read_bytes() == damaged
