"""A run directory is used by one run at a time, end to end through `deeplabv1 train`: a second
run is refused in one line while the first goes on, a killed run's lock and temporary files are
taken over and cleaned, a full disk is named and leaves the earlier checkpoint intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from robustness_tools import CLI, assert_one_line_error, cli, on_small_disk, tiny_checkpoint

from deeplabv1.checkpoint import load_checkpoint
from deeplabv1.io import OUTPUTS_LIST, is_ours
from deeplabv1.rundir import LOCK_NAME
from deeplabv1.train.logger import read_log

TRAIN = ["train", "--arch", "deeplab-largefov", "--width", "0.0625", "--split", "train",
         "--crop-size", "41", "--batch-size", "2", "--log-every", "1", "--workers", "0",
         "--progress", "false", "--tensorboard", "false", "--device", "cpu",
         "--keep-checkpoints", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from deeplabv1.data.synth import make_synthetic_voc

    return make_synthetic_voc(tmp_path_factory.mktemp("synth_runs"), 6, size=(48, 44), seed=0)


def _train_args(root, out, **flags) -> list[str]:
    args = [*TRAIN, "--data-root", str(root), "--out-dir", str(out)]
    for key, value in flags.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args


def _wait_for_lock(out, pid: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((out / LOCK_NAME).read_text())["pid"] == pid:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no lock of pid {pid} in {out}")


def test_second_train_into_the_same_out_dir_is_refused(synth_root, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([*CLI, *_train_args(synth_root, out, seed=1, max_iter=6,
                                                 checkpoint_every=3)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_for_lock(out, first.pid)
        os.kill(first.pid, signal.SIGSTOP)  # the first run holds the folder, deterministically
        second = cli(*_train_args(synth_root, out, seed=2, max_iter=6, checkpoint_every=3))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    assert second.returncode == 2
    assert_one_line_error(second.stderr, "train", str(out), "in use by another deeplabv1 run",
                          f"pid {first.pid}")  # fmt: skip
    assert first.returncode == 0, stderr
    assert stdout.strip().endswith("final.pt")
    for name in ("final.pt", "checkpoint_000003.pt"):  # only the first run's files
        assert load_checkpoint(out / name)["config"]["seed"] == 1
    # the lock ends with its run; the folder now holds a finished run: a fresh run replaces it
    # only when told to (--overwrite), and then none of the earlier run's checkpoints remain
    again = cli(*_train_args(synth_root, out, seed=2, max_iter=2, checkpoint_every=0,
                             overwrite="true"))  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert load_checkpoint(out / "final.pt")["config"]["seed"] == 2
    assert not (out / "checkpoint_000003.pt").exists()


def test_killed_run_lock_and_temporaries_are_taken_over(synth_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # a run that holds the folder and is killed (kill -9) in the middle of a checkpoint write
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from deeplabv1.rundir import RunLock; "
                               "from deeplabv1.io import atomic_path; "
                               f"RunLock({str(out)!r}).acquire(); "
                               f"w = atomic_path({str(out / 'checkpoint_000002.pt')!r}); "
                               "print(w.__enter__(), flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    stale = Path(holder.stdout.readline().strip())
    assert stale.parent == out and stale.is_file()
    refused = cli(*_train_args(synth_root, out, max_iter=1, checkpoint_every=0))
    assert refused.returncode == 2 and f"pid {holder.pid}" in refused.stderr
    assert stale.is_file()  # its writer still runs
    holder.kill()  # kill -9: the lock file and the temporary stay behind, naming a dead process
    holder.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid
    # user files, some named like temporaries (of older versions, or made up)
    kept = [out / "notes.tmp", out / ".keep.tmp", out / ".checkpoint_000002.pt.a1b2c3d4.tmp"]
    for path in kept:
        path.write_text("mine")
    proc = cli(*_train_args(synth_root, out, max_iter=2, checkpoint_every=1))
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists()
    assert all(path.read_text() == "mine" for path in kept)
    assert load_checkpoint(out / "final.pt")["iteration"] == 2


def test_train_on_a_full_disk_names_the_file_and_keeps_the_earlier_checkpoint(synth_root, tmp_path):
    ref = tmp_path / "ref"
    assert cli(*_train_args(synth_root, ref, max_iter=1, checkpoint_every=0)).returncode == 0
    size = (ref / "final.pt").stat().st_size
    disk = tmp_path / "disk"
    out = disk / "run"
    # room for the small files and one checkpoint, not two
    rc, err, files = on_small_disk(disk, _train_args(synth_root, out, max_iter=3,
                                                     checkpoint_every=1),
                                   size=str(size + size // 2 + 64 * 1024))  # fmt: skip
    assert rc == 2
    assert_one_line_error(err, "train", str(out / "checkpoint_000002.pt"), "No space left",
                          "the disk is full")  # fmt: skip
    assert abs(files["run/checkpoint_000001.pt"] - size) < 1024  # the earlier one, complete
    assert not [name for name in files if name.endswith(".tmp")]


def _snapshot(folder: Path) -> dict[str, bytes]:
    """The run's files (not the lock, which names the last process to take the folder)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != LOCK_NAME}


def test_a_finished_run_is_kept_from_fresh_runs_and_other_commands(synth_root, tmp_path):
    run = tmp_path / "run"
    first = cli(*_train_args(synth_root, run, seed=1, max_iter=2, checkpoint_every=1))
    assert first.returncode == 0, first.stderr
    before = _snapshot(run)
    assert {"config.yaml", "log.jsonl", "final.pt", "checkpoint_000001.pt"} <= before.keys()
    # a fresh run (no --resume) into it: one line, nothing of the finished run touched
    fresh = cli(*_train_args(synth_root, run, seed=2, max_iter=4, checkpoint_every=1,
                             keep_checkpoints=1))  # fmt: skip
    assert fresh.returncode == 2
    assert_one_line_error(fresh.stderr, "train", str(run), "earlier training run", "--resume",
                          "--overwrite")  # fmt: skip
    assert _snapshot(run) == before
    # eval into the training run: its config.yaml (how the model was trained) stays
    evaluate = ["eval", "--weights", run / "final.pt", "--data", synth_root, "--split", "val",
                "--test-size", "49", "--device", "cpu", "--progress", "false"]  # fmt: skip
    proc = cli(*evaluate, "-o", run)
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "eval", str(run / "config.yaml"), "deeplabv1 train")
    proc = cli(*evaluate, "-o", run, "--overwrite")  # not even when told to overwrite
    assert proc.returncode == 2
    assert _snapshot(run) == before
    # and the other way round: train into an eval's folder
    evaluated = tmp_path / "e"
    proc = cli(*evaluate, "-o", evaluated)
    assert proc.returncode == 0, proc.stderr
    eval_config = (evaluated / "config.yaml").read_bytes()
    proc = cli(*_train_args(synth_root, evaluated, max_iter=1, checkpoint_every=0))
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "train", str(evaluated / "config.yaml"), "deeplabv1 eval")
    assert (evaluated / "config.yaml").read_bytes() == eval_config
    # continuing the finished run is what --resume is for
    more = cli(*_train_args(synth_root, run, seed=1, max_iter=3, checkpoint_every=1,
                            resume="auto"))  # fmt: skip
    assert more.returncode == 0, more.stderr
    assert load_checkpoint(run / "final.pt")["iteration"] == 3


def _damaged_copy(synth_root, tmp_path, what: str) -> tuple[Path, Path]:
    """A copy of the dataset with one training item damaged: a mask of the wrong size, or an
    image cut short after its header (its size reads, its pixels do not)."""
    import shutil

    from PIL import Image

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    sid = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[0]
    if what == "mask":
        bad = root / "SegmentationClass" / f"{sid}.png"
        with Image.open(bad) as img:
            img.crop((0, 0, img.width - 3, img.height)).save(bad)
    else:
        bad = root / "JPEGImages" / f"{sid}.jpg"
        bad.write_bytes(bad.read_bytes()[:400])
    return root, bad


@pytest.mark.parametrize("what", ["mask", "image"])
def test_a_bad_item_with_loader_workers_is_one_line(synth_root, tmp_path, what):
    """With loader worker processes a bad item is the same one line as without them (a mask
    of the wrong size is found before training starts; an image that cannot be decoded in a
    worker comes back without the worker's traceback)."""
    root, bad = _damaged_copy(synth_root, tmp_path, what)
    for workers in (0, 2):
        proc = cli(*_train_args(root, tmp_path / f"run{workers}", max_iter=3, checkpoint_every=0,
                                workers=workers))  # fmt: skip
        assert proc.returncode == 2
        assert_one_line_error(proc.stderr, "train", str(bad))
    if what == "mask":
        assert "differs from image" in proc.stderr and not (tmp_path / "run2").exists()


def test_a_killed_run_with_loader_workers_frees_its_folder_at_once(synth_root, tmp_path):
    """kill -9 of a run whose DataLoader workers are still running: the folder is free at once
    (the workers, which end only seconds later, hold no copy of the lock) and the run resumes."""
    from deeplabv1.rundir import RunLock

    out = tmp_path / "run"
    run = subprocess.Popen([*CLI, *_train_args(synth_root, out, max_iter=1_000_000,
                                               checkpoint_every=1, keep_checkpoints=2, workers=2)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        # any checkpoint past the first (pruning removes older ones while we look)
        while not [p for p in out.glob("checkpoint_*.pt") if int(p.stem.split("_")[1]) >= 2]:
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()
            time.sleep(0.05)
        workers = subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True, text=True)
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        assert workers.stdout.split(), "the run had no loader worker processes"
        RunLock(out).acquire().release()  # free at once, while the orphaned workers live on
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        run.stderr.close()
    newest = max(int(p.stem.split("_")[1]) for p in out.glob("checkpoint_*.pt"))
    proc = cli(*_train_args(synth_root, out, resume="auto", max_iter=newest + 2,
                            checkpoint_every=0, workers=2))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert load_checkpoint(out / "final.pt")["iteration"] == newest + 2


def test_overwrite_deletes_only_the_checkpoints_train_wrote(synth_root, tmp_path):
    """`train --overwrite` over an earlier run deletes that run's own checkpoints, keeps (and
    names) a checkpoint-named file of the user's, and pruning never deletes it either."""
    run = tmp_path / "run"
    assert cli(*_train_args(synth_root, run, max_iter=2, checkpoint_every=1)).returncode == 0
    mine = run / "checkpoint_000000.pt"  # the oldest by its number: the first to prune
    mine.write_bytes(b"my own notes, named like a checkpoint")
    proc = cli(*_train_args(synth_root, run, seed=2, max_iter=2, checkpoint_every=1,
                            keep_checkpoints=1, overwrite="true"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert mine.read_bytes() == b"my own notes, named like a checkpoint"
    assert "checkpoint_000000.pt" in proc.stderr and "not written by deeplabv1" in proc.stderr
    assert load_checkpoint(run / "final.pt")["config"]["seed"] == 2
    # the earlier run's checkpoint 1 was replaced by this run's, the newest kept; mine stays
    left = sorted(p.name for p in run.glob("checkpoint_*.pt"))
    assert left == ["checkpoint_000000.pt", "checkpoint_000001.pt"]
    assert load_checkpoint(run / "checkpoint_000001.pt")["config"]["seed"] == 2


def _bad_start_over(what: str, synth_root, tmp_path) -> tuple[Path, dict, str]:
    """The dataset and flags of a `train --overwrite` that must fail, and what its error names."""
    root, flags = synth_root, {}
    if what == "missing init":
        flags["init"] = fragment = tmp_path / "typo.pt"
    elif what == "non-torch init":
        flags["init"] = fragment = tmp_path / "notes.pt"
        fragment.write_text("not a checkpoint\n")
    elif what == "init of another width":
        flags["init"] = fragment = tiny_checkpoint(tmp_path / "wide.pt", width=0.125)
    elif what == "missing split":
        flags["split"] = "all"
        fragment = "no list for split 'all'"
    elif what == "crf settings":
        flags.update(crf="end-to-end", crf_max_iter=0)
        fragment = "crf_max_iter"
    else:  # a dataset image cut short: its header reads, its pixels do not (in the first batches)
        root, bad = _damaged_copy(synth_root, tmp_path, "image")
        fragment = f"{bad}: cannot read image"
    return root, flags, fragment


@pytest.mark.parametrize("what", ["missing init", "non-torch init", "init of another width",
                                  "missing split", "crf settings", "truncated image"])
def test_overwrite_with_a_bad_input_keeps_the_earlier_run(synth_root, tmp_path, what):
    """`train --overwrite` checks what it can (settings, --init against the network, the
    dataset) before the earlier run makes way for it, and an error before the new run's first
    checkpoint (an image that does not decode) puts the earlier run back: one error line, exit
    status 2, and every file of the earlier run as it was, still train's own."""
    run = tmp_path / "run"
    first = cli(*_train_args(synth_root, run, seed=1, max_iter=3, checkpoint_every=1))
    assert first.returncode == 0, first.stderr
    before = _snapshot(run)
    del before[OUTPUTS_LIST]  # the list of deeplabv1's files, which may grow
    assert {"config.yaml", "log.jsonl", "final.pt", "checkpoint_000001.pt",
            "checkpoint_000002.pt"} == before.keys()  # fmt: skip
    root, flags, fragment = _bad_start_over(what, synth_root, tmp_path)
    # the whole dataset is read before the new run's first checkpoint (final.pt)
    proc = cli(*_train_args(root, run, seed=2, max_iter=4, checkpoint_every=0, overwrite="true",
                            **flags))  # fmt: skip
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "train", str(fragment))
    after = _snapshot(run)
    assert after.pop(OUTPUTS_LIST)
    assert after == before  # byte for byte, and nothing else left behind
    assert sorted(p.name for p in run.iterdir()) == sorted([*before, LOCK_NAME, OUTPUTS_LIST])
    assert all(is_ours(run / name) for name in before)  # train's own: replaced, pruned as before


def test_overwrite_replaces_the_earlier_run_by_the_new_one(synth_root, tmp_path):
    """A good `train --overwrite`: the earlier run's checkpoints are deleted (by the new run's
    first checkpoint at the latest, never pruned or resumed as its own) and the folder holds the
    new run only."""
    run = tmp_path / "run"
    first = cli(*_train_args(synth_root, run, seed=1, max_iter=5, checkpoint_every=1))
    assert first.returncode == 0, first.stderr
    assert len(list(run.glob("checkpoint_*.pt"))) == 4
    proc = cli(*_train_args(synth_root, run, seed=2, max_iter=3, checkpoint_every=1,
                            keep_checkpoints=1, overwrite="true"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    left = sorted(p.name for p in run.iterdir() if p.name not in (LOCK_NAME, OUTPUTS_LIST))
    assert left == ["checkpoint_000002.pt", "config.yaml", "final.pt", "log.jsonl"]
    for name in ("checkpoint_000002.pt", "final.pt"):
        assert load_checkpoint(run / name)["config"]["seed"] == 2
    assert "seed: 2" in (run / "config.yaml").read_text()
    assert [r["iter"] for r in read_log(run / "log.jsonl")] == [1, 2, 3]
    more = cli(*_train_args(synth_root, run, seed=2, max_iter=4, checkpoint_every=1,
                            keep_checkpoints=1, resume="auto"))  # fmt: skip
    assert more.returncode == 0, more.stderr
    assert load_checkpoint(run / "final.pt")["iteration"] == 4


def test_resume_auto_from_the_console_passes_over_a_damaged_checkpoint(synth_root, tmp_path):
    """`train --resume auto`: a damaged newest checkpoint is one note line on stderr (the run
    goes on from the one before and keeps the file); when none loads, one error line naming
    the folder and exit status 2."""
    out = tmp_path / "run"
    assert cli(*_train_args(synth_root, out, max_iter=3, checkpoint_every=1)).returncode == 0
    (out / "final.pt").unlink()
    newest = out / "checkpoint_000002.pt"
    newest.write_bytes(b"PK\x03\x04 cut short")
    proc = cli(*_train_args(synth_root, out, max_iter=3, checkpoint_every=1, resume="auto"))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("deeplabv1 train: ")]
    assert notes == [f"deeplabv1 train: note: {newest}: not a deeplabv1 checkpoint: the file is "
                     f"damaged or cut short; resuming from {out / 'checkpoint_000001.pt'} "
                     "instead (the unreadable file is kept as it is)"]  # fmt: skip
    assert newest.read_bytes() == b"PK\x03\x04 cut short"
    assert load_checkpoint(out / "final.pt")["iteration"] == 3
    for path in out.glob("*.pt"):
        path.write_bytes(b"")
    proc = cli(*_train_args(synth_root, out, max_iter=3, checkpoint_every=1, resume="auto"))
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "train", f"{out}: nothing to resume from", "final.pt",
                          "the file is empty", "--resume PATH")  # fmt: skip


def _overwrite_stopped_at_set_aside(synth_root, tmp_path, sig) -> tuple[Path, dict, str, int]:
    """An earlier run, then a `train --overwrite` over it stopped by ``sig`` once it has set the
    earlier run aside (before its first checkpoint): (folder, earlier files, stderr, status)."""
    run = tmp_path / "run"
    first = cli(*_train_args(synth_root, run, seed=1, max_iter=3, checkpoint_every=1))
    assert first.returncode == 0, first.stderr
    before = _snapshot(run)
    del before[OUTPUTS_LIST]  # the list of deeplabv1's files, which may grow
    with open(tmp_path / "stderr.txt", "w+") as err:
        proc = subprocess.Popen([*CLI, *_train_args(synth_root, run, seed=2, max_iter=1_000_000,
                                                    checkpoint_every=100_000, overwrite="true")],
                                stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not list(run.glob(".earlier-run.*.tmp")):
                assert proc.poll() is None and time.monotonic() < deadline, proc.returncode
                time.sleep(0.02)
            time.sleep(0.5)  # into the training iterations
            os.kill(proc.pid, sig)
            status = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        stderr = err.read()
    return run, before, stderr, status


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_overwrite_terminated_before_its_first_checkpoint_puts_the_earlier_run_back(
        synth_root, tmp_path, sig):  # fmt: skip
    """SIGTERM or SIGHUP (`kill`, a closed terminal, `timeout`, a preempted job) of a `train
    --overwrite` before its first checkpoint is like Ctrl-C: the earlier run is put back byte for
    byte, no hidden folder stays, and the command ends in one line with status 128 + signal."""
    run, before, stderr, status = _overwrite_stopped_at_set_aside(synth_root, tmp_path, sig)
    assert status == 128 + sig, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("deeplabv1 train: ")]
    assert lines[-1].startswith("deeplabv1 train: terminated"), stderr
    assert "the earlier run is back" in stderr
    after = _snapshot(run)
    assert after.pop(OUTPUTS_LIST)
    assert after == before
    assert sorted(p.name for p in run.iterdir()) == sorted([*before, LOCK_NAME, OUTPUTS_LIST])


def test_overwrite_killed_before_its_first_checkpoint_leaves_the_earlier_run_to_resume(
        synth_root, tmp_path):  # fmt: skip
    """kill -9 (or a power cut) of a `train --overwrite` before its first checkpoint leaves the
    earlier run set aside in a hidden folder: the next `train` into the folder puts it back
    (saying so), and `--resume auto` then continues it, nothing of it lost."""
    run, before, _, status = _overwrite_stopped_at_set_aside(synth_root, tmp_path, signal.SIGKILL)
    assert status == -signal.SIGKILL
    assert len(list(run.glob(".earlier-run.*.tmp"))) == 1
    assert "seed: 2" in (run / "config.yaml").read_text()  # the killed run's own
    proc = cli(*_train_args(synth_root, run, seed=1, max_iter=5, checkpoint_every=1,
                            resume="auto"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "put back" in line]
    assert len(notes) == 1 and "earlier run" in notes[0], proc.stderr
    assert not list(run.glob(".*.tmp"))
    # resumed (iterations 4 and 5 after the earlier run's 1 to 3), not trained from scratch
    assert load_checkpoint(run / "final.pt")["iteration"] == 5
    assert [r["iter"] for r in read_log(run / "log.jsonl")] == [1, 2, 3, 4, 5]
    for name in ("checkpoint_000001.pt", "checkpoint_000002.pt"):
        assert (run / name).read_bytes() == before[name]
    assert "seed: 1" in (run / "config.yaml").read_text()


def test_a_set_aside_earlier_run_is_not_a_stale_temporary(tmp_path):
    """The generic cleanup of dead processes' temporaries (every command) leaves an earlier run
    set aside by a killed `train --overwrite` for `train` to put back."""
    from deeplabv1.io import HOST_TAG, remove_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = tmp_path / f".earlier-run.{dead.pid}-{HOST_TAG}-abcd1234.tmp"
    aside.mkdir()
    (aside / "final.pt").write_bytes(b"the earlier run")
    stale = tmp_path / f".final.pt.{dead.pid}-{HOST_TAG}-abcd1234.tmp"
    stale.write_bytes(b"half written")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert (aside / "final.pt").read_bytes() == b"the earlier run"


def test_train_takes_sigterm_and_sighup_only_while_it_runs():
    """The handlers that turn SIGTERM and SIGHUP into an exception are train's for its duration
    only: the previous ones come back after it, also when the signal ended it."""
    from deeplabv1.cli.train import terminate_as_interrupt
    from deeplabv1.errors import Terminated

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig in before:
        with pytest.raises(Terminated) as caught, terminate_as_interrupt():
            os.kill(os.getpid(), sig)
            time.sleep(5)
        assert caught.value.signum == sig
        assert {s: signal.getsignal(s) for s in before} == before
