"""``crf --image-dir`` under torchrun (gloo, CPU) writes exactly a single process's outputs;
--resume skips complete pairs; one process stays torch-free.

Seven pairs: six small images of two sizes and one pair whose scores are NaN, which lands on a
rank other than 0 (sorted: p0 .. p4, p4_bad, p5; 2 ranks: 4 + 3, 3 ranks: 3 + 2 + 2). Every
pair runs on one engine thread under torchrun; the single-process reference does too
(``set_num_threads(1)``): the engine's float sums depend on the thread count.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import requires_cuda
from gloo_helpers import spawn
from PIL import Image
from test_crf_cli import _BLOCK_TORCH
from test_predict_distributed import HOUSEKEEPING, run_rank, statuses

from deeplabv1.cli import main

GOOD = [f"p{i}" for i in range(6)]
BAD = "p4_bad"
RUN_FILES = {"crf_config.yaml", "crf_setup.json", "crf_summary.json"}
FLAGS = ["--iters", "3", "--sa", "15", "--sg", "2", "--out-format", "both"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Image / score folders and the single-process reference run (PNG labels + marginals)."""
    root = tmp_path_factory.mktemp("crfdist")
    rng = np.random.default_rng(7)
    for d in ("img", "npy"):
        (root / d).mkdir()
    for i, stem in enumerate([*GOOD, BAD]):
        h, w = (20, 28) if i % 2 else (24, 30)
        labels = np.kron(rng.integers(0, 4, (2, 3)), np.ones((h // 2 + 1, w // 3 + 1), int))
        labels = labels[:h, :w]
        rgb = np.clip(50 * labels[..., None] + rng.normal(60, 15, (h, w, 3)), 0, 255)
        scores = 2 * np.eye(4, dtype=np.float32)[labels].transpose(2, 0, 1)
        scores += rng.normal(0, 1.5, scores.shape).astype(np.float32)
        if stem == BAD:
            scores[0, 0, 0] = np.nan
        Image.fromarray(rgb.astype(np.uint8)).save(root / "img" / f"{stem}.png")
        np.save(root / "npy" / f"{stem}.npy", scores)
    from deeplabv1.crf import get_num_threads, set_num_threads

    threads = get_num_threads()
    set_num_threads(1)
    try:
        assert main(argv(root, root / "one", "--workers", "1")) == 1  # the bad pair
    finally:
        set_num_threads(threads)
    return root


def argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["crf", "--image-dir", str(root / "img"), "--scores-dir", str(root / "npy"),
            "--out-dir", str(out), *FLAGS, *extra]  # fmt: skip


def pair_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir()
            if p.name not in HOUSEKEEPING | RUN_FILES}  # fmt: skip


def summary_of(out: Path) -> dict:
    return json.loads((out / "crf_summary.json").read_text())


def assert_same_as_single(root: Path, out: Path) -> dict:
    """Every label PNG and marginals .npy byte for byte the reference's; the same summary but
    for the per-rank lines; the same setup record."""
    ref = pair_files(root / "one")
    assert sorted(ref) == sorted(f"{s}{x}" for s in GOOD for x in (".npy", ".png"))
    got = pair_files(out)
    assert sorted(got) == sorted(ref)  # nothing for the bad pair, no stray files
    for name, data in ref.items():
        assert got[name] == data, name
    want, summary = summary_of(root / "one"), summary_of(out)
    drop = ("ranks", "world_size")
    assert {k: v for k, v in summary.items() if k not in drop} == {
        k: v for k, v in want.items() if k not in drop
    }
    setups = [json.loads((d / "crf_setup.json").read_text())["setup"] for d in (root / "one", out)]
    assert setups[0] == setups[1]
    return summary


def test_reference_summary_names_the_bad_pair(single):
    summary = summary_of(single / "one")
    assert summary["processed"] == GOOD and summary["skipped"] == []
    [failed] = summary["failed"]
    assert failed["name"] == BAD and f"{BAD}.npy" in failed["error"] and "NaN" in failed["error"]
    assert summary["counts"] == {"processed": 6, "skipped": 0, "failed": 1}
    assert summary["world_size"] == 1 and summary["pairs"] == 7
    # the marginals are the engine's on the same arrays
    from deeplabv1.cli.crf_files import read_pair
    from deeplabv1.crf import CRFParams, deeplab_crf_np, get_num_threads, set_num_threads

    rgb, scores = read_pair(single / "img" / "p1.png", single / "npy" / "p1.npy")
    threads = get_num_threads()
    set_num_threads(1)
    try:
        q = deeplab_crf_np(scores, rgb, CRFParams(w1=4, sa=15, sb=5, w2=3, sg=2), iters=3)
    finally:
        set_num_threads(threads)
    np.testing.assert_array_equal(np.load(single / "one" / "p1.npy"), q)
    np.testing.assert_array_equal(np.asarray(Image.open(single / "one" / "p1.png")), q.argmax(0))


@pytest.mark.slow
def test_two_processes_with_worker_pools_write_what_one_process_writes(single, tmp_path):
    out = tmp_path / "two"
    spawn(run_rank, 2, argv(single, out, "--workers", "2"), str(tmp_path))
    assert statuses(tmp_path, 2) == [1, 0]  # rank 0 reports the failure for all
    summary = assert_same_as_single(single, out)
    # rank 0: p0..p3; rank 1: p4, the bad pair, p5
    assert [(r["processed"], r["failed"]) for r in summary["ranks"]] == [(4, 0), (2, 1)]


@pytest.mark.slow
def test_torchrun_three_processes_uneven_split_and_exit_status(single, tmp_path):
    """The real launcher: 7 pairs over 3 ranks (3, 2, 2); the bad one is on rank 2."""
    out = tmp_path / "three"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3",
           "--standalone", "-m", "deeplabv1", *argv(single, out, "--workers", "1")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0  # something failed: the bad pair
    assert f"skipped {single / 'npy' / BAD}.npy" in proc.stderr
    assert proc.stdout.count("wrote 6 of 7 label map + marginals pairs") == 1  # rank 0 only
    summary = assert_same_as_single(single, out)
    assert [(r["processed"], r["failed"]) for r in summary["ranks"]] == [(3, 0), (2, 0), (1, 1)]


def _die_after_first_pair(rank: int, world: int, args: list[str], status_dir: str) -> None:
    """Rank 1 dies (SIGKILL, no clean-up) right after its first pair's outputs are written."""
    if rank == 1:
        from deeplabv1.cli import crf_files

        real = crf_files.write_outputs

        def write_then_die(*a, **k):
            labels = real(*a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
            return labels

        crf_files.write_outputs = write_then_die
    run_rank(rank, world, args, status_dir)


@pytest.mark.slow
def test_killed_rank_then_resume_completes_without_redoing_finished_pairs(single, tmp_path):
    out = tmp_path / "crash"
    with pytest.raises(Exception, match="SIGKILL|signal"):
        spawn(_die_after_first_pair, 2, argv(single, out, "--workers", "1"), str(tmp_path))
    finished = [s for s in GOOD if (out / f"{s}.png").is_file() and (out / f"{s}.npy").is_file()]
    assert "p4" in finished and "p5" not in finished  # rank 1's first pair survived
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
              for s in finished for p in out.glob(f"{s}.*")}  # fmt: skip
    spawn(run_rank, 2, argv(single, out, "--workers", "1", "--resume"), str(tmp_path))
    assert statuses(tmp_path, 2) == [1, 0]  # the bad pair fails again
    summary = summary_of(out)
    assert summary["skipped"] == finished
    assert summary["processed"] == [s for s in GOOD if s not in finished]
    assert [f["name"] for f in summary["failed"]] == [BAD]
    for name, stamp in stamps.items():  # finished pairs were not redone
        st = (out / name).stat()
        assert (st.st_ino, st.st_mtime_ns) == stamp, name
    assert pair_files(out) == pair_files(single / "one")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # stale temporaries gone


_RUN_ALONE = """import sys
from deeplabv1.cli import main
from deeplabv1.crf import set_num_threads
set_num_threads(1)
args = sys.argv[1:]
statuses = [main(args), main([*args, "--resume"]), main([*args, "--resume", "--iters", "2"])]
assert "torch" not in sys.modules, "torch imported"
print("statuses", *statuses)
"""


def test_one_process_resumes_torch_free_and_refuses_other_settings(single, tmp_path):
    """Without torchrun: no process group and no torch, also for --resume (setup record,
    complete-output check, summary); a resume with other settings stops before any work."""
    block = tmp_path / "block" / "torch"
    block.mkdir(parents=True)
    (block / "__init__.py").write_text(_BLOCK_TORCH)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    path = os.pathsep.join([str(block.parent), os.environ.get("PYTHONPATH", "")])
    env.update(TORCH_IMPORTS=str(tmp_path / "torch_imports.txt"), DEEPLABV1_CRF_NUMBA="1",
               PYTHONPATH=path)  # fmt: skip
    out = tmp_path / "alone"
    run = subprocess.run([sys.executable, "-c", _RUN_ALONE, *argv(single, out, "--workers", "1")],
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "statuses 1 1 2" in run.stdout
    assert not (tmp_path / "torch_imports.txt").exists()
    assert "wrote 0 of 7 label map + marginals pairs" in run.stdout
    assert "6 skipped (outputs complete)" in run.stdout
    assert "other settings (iters: 3 then, 2 now)" in run.stderr
    summary = summary_of(out)  # the resumed run's
    assert summary["skipped"] == GOOD and summary["processed"] == []
    assert [f["name"] for f in summary["failed"]] == [BAD]  # no outputs: tried again
    assert pair_files(out) == pair_files(single / "one")
    assert main(["crf", "--image", "a.png", "--scores", "a.npy", "-o", "b.png", "--resume"]) == 2


@requires_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_torchrun_cuda_puts_each_rank_on_its_gpu(single, tmp_path):
    out = tmp_path / "gpu"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--standalone", "-m", "deeplabv1", *argv(single, out, "--device", "cuda")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "wrote 6 of 7" in proc.stdout, proc.stderr
    for stem in GOOD:
        q = np.load(out / f"{stem}.npy")
        np.testing.assert_allclose(q, np.load(single / "one" / f"{stem}.npy"), atol=1e-4)
