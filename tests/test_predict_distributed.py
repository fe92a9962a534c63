"""``predict`` under torchrun (gloo, CPU) writes exactly a single process's outputs; --resume
skips complete images; --crf-device / --crf-batch-size choose where and how the CRF runs.

Seven inputs: six small images of two sizes and one broken file, which lands on a rank other
than 0 (sorted: img0 .. img4, img4_broken, img5). The single-process reference runs with one
torch thread, as every rank does.
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

from deeplabv1.checkpoint import save_checkpoint
from deeplabv1.cli import main
from deeplabv1.models import build_model

GOOD = [f"img{i}" for i in range(6)]
BROKEN = "img4_broken"
HOUSEKEEPING = {".deeplabv1.lock", ".deeplabv1-outputs"}
RUN_FILES = {"predict_config.yaml", "predict_summary.json", "predict_setup.json"}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Inputs, weights and the single-process reference run (network + CRF)."""
    root = tmp_path_factory.mktemp("predictdist")
    inputs = root / "in"
    inputs.mkdir()
    rng = np.random.default_rng(3)
    for i, name in enumerate(GOOD):
        h = 30 if i % 2 else 26  # two sizes: the CRF batches by size
        rgb = rng.integers(0, 256, (h, 40, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(inputs / f"{name}.png")
    (inputs / f"{BROKEN}.png").write_bytes(b"\x89PNG truncated")
    torch.manual_seed(0)
    model = build_model("deeplab-largefov", width=1 / 16)
    weights = root / "model.pt"
    save_checkpoint(weights, model.state_dict(), arch=model.arch, num_classes=21, width=1 / 16,
                    model_kwargs=model.model_kwargs)  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        status = main(argv(root, root / "one"))
    finally:
        torch.set_num_threads(threads)
    assert status == 1  # the broken file
    return root


def argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", str(root / "in"), "--weights", str(root / "model.pt"), "-o", str(out),
            "--crf", "--crf-iters", "3", "--test-size", "0", *extra]  # fmt: skip


def run_rank(rank: int, world: int, args: list[str], status_dir: str) -> None:
    """``deeplabv1 <args>`` in one rank; its exit status goes to ``status_dir/rank<N>``."""
    status = main(args)
    Path(status_dir, f"rank{rank}").write_text(str(status))


def statuses(folder: Path, world: int) -> list[int]:
    return [int((folder / f"rank{r}").read_text()) for r in range(world)]


def image_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir()
            if p.name not in HOUSEKEEPING | RUN_FILES}  # fmt: skip


def comparable(summary: dict) -> dict:
    """The summary without timings, the output folder's name and the per-rank lines."""
    out = {k: v for k, v in summary.items() if k not in ("ranks", "world_size", "config")}
    out["images"] = [{k: v for k, v in r.items() if k != "seconds"} for r in out["images"]]
    return out


def assert_same_as_single(root: Path, out: Path) -> dict:
    ref_files, got_files = image_files(root / "one"), image_files(out)
    assert len(ref_files) == 4 * len(GOOD)  # net, net overlay, crf, crf overlay
    assert sorted(got_files) == sorted(ref_files)
    for name, data in ref_files.items():
        assert got_files[name] == data, name
    assert {p.name for p in out.iterdir()} >= RUN_FILES
    ref = json.loads((root / "one" / "predict_summary.json").read_text())
    got = json.loads((out / "predict_summary.json").read_text())
    assert comparable(got) == comparable(ref)
    setups = [json.loads((d / "predict_setup.json").read_text()) for d in (root / "one", out)]
    assert setups[0]["setup"] == setups[1]["setup"]
    return got


def test_reference_summary_names_the_broken_image(single):
    summary = json.loads((single / "one" / "predict_summary.json").read_text())
    names = [str(single / "in" / f"{n}.png") for n in GOOD]
    assert [r["input"] for r in summary["images"]] == names
    assert [f["input"] for f in summary["failed"]] == [str(single / "in" / f"{BROKEN}.png")]
    assert summary["counts"] == {"processed": 6, "skipped": 0, "failed": 1, "unmatched": 0}
    assert summary["world_size"] == 1 and summary["skipped"] == []


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(single, tmp_path):
    out = tmp_path / "two"
    spawn(run_rank, 2, argv(single, out), str(tmp_path))
    assert statuses(tmp_path, 2) == [1, 0]  # rank 0 reports the failure for all
    summary = assert_same_as_single(single, out)
    # rank 0: img0..img3; rank 1: img4, the broken file, img5
    assert [(r["processed"], r["failed"]) for r in summary["ranks"]] == [(4, 0), (2, 1)]
    assert {p.name for p in out.iterdir()} - HOUSEKEEPING - RUN_FILES == set(
        image_files(single / "one")
    )  # no stray per-rank files


@pytest.mark.slow
def test_torchrun_three_processes_uneven_split_and_exit_status(single, tmp_path):
    """The real launcher: 7 inputs over 3 ranks (3, 2, 2); the broken one is on rank 2."""
    out = tmp_path / "three"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3",
           "--standalone", "-m", "deeplabv1", *argv(single, out)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0  # something failed: the broken image
    assert f"{BROKEN}.png" in proc.stderr
    assert proc.stdout.count("deeplabv1 predict: 6 image(s) segmented") == 1  # rank 0 only
    summary = assert_same_as_single(single, out)
    assert [(r["processed"], r["failed"]) for r in summary["ranks"]] == [(3, 0), (2, 0), (1, 1)]


def _die_after_first_image(rank: int, world: int, args: list[str], status_dir: str) -> None:
    """Rank 1 dies (SIGKILL, no clean-up) right after its first image's outputs are written."""
    if rank == 1:
        from deeplabv1.predict import pipeline

        real = pipeline.write_outputs

        def write_then_die(*a, **k):
            record = real(*a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
            return record

        pipeline.write_outputs = write_then_die
    run_rank(rank, world, args, status_dir)


@pytest.mark.slow
def test_killed_rank_then_resume_completes_without_redoing_finished_images(single, tmp_path):
    out = tmp_path / "crash"
    with pytest.raises(Exception, match="SIGKILL|signal"):
        spawn(_die_after_first_image, 2, argv(single, out), str(tmp_path))

    def complete(name: str) -> bool:
        return all((out / f"{name}_{k}.png").is_file() for k in ("net", "net_overlay", "crf",
                                                                  "crf_overlay"))  # fmt: skip

    finished = [n for n in GOOD if complete(n)]
    assert "img4" in finished and "img5" not in finished  # rank 1's first image survived
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
              for n in finished for p in out.glob(f"{n}_*.png")}  # fmt: skip
    spawn(run_rank, 2, argv(single, out, "--resume"), str(tmp_path))
    assert statuses(tmp_path, 2) == [1, 0]  # the broken file fails again
    summary = json.loads((out / "predict_summary.json").read_text())
    inputs = {n: str(single / "in" / f"{n}.png") for n in [*GOOD, BROKEN]}
    assert summary["skipped"] == [inputs[n] for n in finished]
    assert [r["input"] for r in summary["images"]] == [inputs[n] for n in GOOD if n not in finished]
    assert [f["input"] for f in summary["failed"]] == [inputs[BROKEN]]
    for name, stamp in stamps.items():  # finished images were not redone
        st = (out / name).stat()
        assert (st.st_ino, st.st_mtime_ns) == stamp, name
    ref = image_files(single / "one")
    assert image_files(out) == ref
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # stale temporaries gone


def test_resume_alone_skips_complete_images_and_refuses_other_settings(single, tmp_path, capsys):
    for name in ("img0", "img1"):
        (tmp_path / f"{name}.png").write_bytes((single / "in" / f"{name}.png").read_bytes())
    out = tmp_path / "r"
    two = [str(tmp_path / "img0.png"), str(tmp_path / "img1.png")]
    options = ["--weights", str(single / "model.pt"), "-o", str(out), "--test-size", "0"]
    base = ["predict", *two, *options]
    assert main([*base, "--resume"]) == 0  # a fresh folder: --resume just starts
    stamp = {p.name: p.stat().st_ino for p in out.glob("img*.png")}
    assert len(stamp) == 4
    assert main([*base, "--resume"]) == 0  # everything complete: nothing redone
    assert {p.name: p.stat().st_ino for p in out.glob("img*.png")} == stamp
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["skipped"] == two and summary["images"] == []
    assert "0 image(s) segmented" in capsys.readouterr().out
    (out / "img1_net_overlay.png").unlink()  # an incomplete image is redone, alone
    assert main([*base, "--resume"]) == 0
    assert (out / "img0_net.png").stat().st_ino == stamp["img0_net.png"]
    assert (out / "img1_net.png").stat().st_ino != stamp["img1_net.png"]
    capsys.readouterr()
    assert main([*base, "--resume", "--alpha", "0.3"]) == 2
    assert "other settings (alpha: 0.5 then, 0.3 now)" in capsys.readouterr().err
    assert main(["predict", *two, str(single / "in" / "img2.png"), *options, "--resume"]) == 2
    assert "other settings (inputs:" in capsys.readouterr().err
    assert main([*base, "--crf", "--resume"]) == 2  # crf outputs missing: other settings
    assert "other settings" in capsys.readouterr().err
    # without --resume every image is written again; a run over earlier outputs that ends
    # with every image written leaves them all current, so --resume may follow
    assert main(base) == 0
    assert all(p.stat().st_ino != stamp[p.name] for p in out.glob("img0_*.png"))
    stamp = {p.name: p.stat().st_ino for p in out.glob("img*.png")}
    assert main([*base, "--resume"]) == 0
    assert {p.name: p.stat().st_ino for p in out.glob("img*.png")} == stamp
    # ... but not after one where an image failed: its files may be the earlier run's
    good = (tmp_path / "img1.png").read_bytes()
    (tmp_path / "img1.png").write_bytes(b"not an image")
    assert main([*base, "--alpha", "0.3"]) == 1
    (tmp_path / "img1.png").write_bytes(good)
    capsys.readouterr()
    assert main([*base, "--alpha", "0.3", "--resume"]) == 2
    assert "earlier run's outputs" in capsys.readouterr().err


def test_batched_crf_and_its_failure_give_the_same_outputs(single, tmp_path, monkeypatch):
    """CRF batches of 3 images of one size (on the CPU) finish out of order and write the same
    files; a batch that fails is redone image by image."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv(single, tmp_path / "b", "--crf-device", "same",
                         "--crf-batch-size", "3")) == 1  # fmt: skip
        from deeplabv1.evaluate.crf_runner import CRFRunner

        def no_batches(self, scores, images, device):
            raise RuntimeError("simulated failure of a batched call")

        monkeypatch.setattr(CRFRunner, "_crf", no_batches)
        assert main(argv(single, tmp_path / "f", "--crf-batch-size", "2")) == 1
    finally:
        torch.set_num_threads(threads)
    ref = image_files(single / "one")
    assert image_files(tmp_path / "b") == ref
    assert image_files(tmp_path / "f") == ref
    for run in ("b", "f"):
        summary = json.loads((tmp_path / run / "predict_summary.json").read_text())
        assert comparable(summary) == comparable(
            json.loads((single / "one" / "predict_summary.json").read_text())
        )


def test_crf_device_choices_on_the_cpu(single, tmp_path, capsys):
    from deeplabv1.errors import DeepLabError
    from deeplabv1.predict.segmenter import Segmenter

    rgb = np.asarray(Image.open(single / "in" / "img0.png"))
    results = [Segmenter.from_checkpoint(single / "model.pt", test_size=None, crf_device=d,
                                         crf_iters=3).predict(rgb, crf=True)
               for d in ("auto", "cpu", "same")]  # fmt: skip
    for r in results[1:]:
        np.testing.assert_array_equal(r.crf_probs, results[0].crf_probs)
    with pytest.raises(DeepLabError, match="crf device"):
        Segmenter.from_checkpoint(single / "model.pt", crf_device="gpu")
    with pytest.raises(SystemExit) as stop:  # argparse: invalid choice
        main(argv(single, tmp_path / "x", "--crf-device", "gpu"))
    assert stop.value.code == 2 and "invalid choice: 'gpu'" in capsys.readouterr().err
    assert main(argv(single, tmp_path / "y", "--crf-batch-size", "0")) == 2
    assert "--crf-batch-size" in capsys.readouterr().err


def test_segmenter_crf_out_of_gpu_memory_runs_on_the_cpu_engine(single, monkeypatch, capsys):
    """The fallback, simulated on the CPU: the CRF's device is taken for a GPU that runs out of
    memory; the CPU engine's result comes back instead, with a note."""
    import deeplabv1.crf
    from deeplabv1.evaluate.crf_runner import CRFRunner
    from deeplabv1.predict.segmenter import Segmenter

    seg = Segmenter.from_checkpoint(single / "model.pt", test_size=None, crf_iters=3)
    rgb = np.asarray(Image.open(single / "in" / "img0.png"))
    want = seg.predict(rgb, crf=True).crf_probs
    real, devices = deeplabv1.crf.deeplab_crf, []

    def gpu_out_of_memory(scores, image, params, iters=10, device=None, **kw):
        devices.append(torch.device(device or scores.device).type)
        if devices[-1] == "cuda":
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(scores, image, params, iters, device=device, **kw)

    monkeypatch.setattr(deeplabv1.crf, "deeplab_crf", gpu_out_of_memory)
    monkeypatch.setattr(CRFRunner, "target", lambda self, d: torch.device("cuda", 0))
    got = seg.predict(rgb, crf=True)
    assert devices == ["cuda", "cpu"] and "ran out of GPU memory" in capsys.readouterr().err
    np.testing.assert_array_equal(got.crf_probs, want)


@requires_cuda
def test_cuda_predict_runs_the_crf_on_the_gpu_like_the_cpu_engine(single, tmp_path):
    out_gpu, out_cpu = tmp_path / "gpu", tmp_path / "cpu"
    assert main(argv(single, out_gpu, "--device", "cuda", "--crf-batch-size", "3")) == 1
    assert main(argv(single, out_cpu, "--device", "cuda", "--crf-device", "cpu")) == 1
    for name in GOOD:
        net = [np.asarray(Image.open(o / f"{name}_net.png")) for o in (out_gpu, out_cpu)]
        np.testing.assert_array_equal(net[0], net[1])  # the same network run
        crf = [np.asarray(Image.open(o / f"{name}_crf.png")) for o in (out_gpu, out_cpu)]
        assert (crf[0] == crf[1]).mean() > 0.99, name  # float order differs, labels agree


@requires_cuda
def test_cuda_segmenter_crf_device(single):
    from deeplabv1.predict.segmenter import Segmenter

    rgb = np.asarray(Image.open(single / "in" / "img0.png"))
    kw = dict(device="cuda", test_size=None, crf_iters=3)
    same = Segmenter.from_checkpoint(single / "model.pt", crf_device="same", **kw)
    cpu = Segmenter.from_checkpoint(single / "model.pt", crf_device="cpu", **kw)
    a, b = same.predict(rgb, crf=True), cpu.predict(rgb, crf=True)
    assert (a.crf_labels == b.crf_labels).mean() > 0.99
    np.testing.assert_allclose(a.crf_probs, b.crf_probs, atol=1e-3)


def _late_rank(rank: int, world: int, seconds: float, status_dir: str) -> None:
    """Rank 1 reaches the barrier 4 s after rank 0, in a group whose collectives wait
    ``seconds``."""
    import time
    from datetime import timedelta

    from deeplabv1.distributed.context import barrier, distributed_session

    try:
        with distributed_session("cpu", timedelta(seconds=seconds)) as info:
            if rank == 1:
                time.sleep(4)
            barrier(info)
        result = "ok"
    except Exception:  # gloo: timed out, or the peer left
        result = "timed out"
    Path(status_dir, f"rank{rank}").write_text(result)


@pytest.mark.slow
def test_session_timeout_is_how_long_a_rank_waits_for_the_others(tmp_path):
    """predict's group waits RANK_WAIT (hours) for ranks that finish late: the timeout reaches
    the process group (a rank 4 s late fails a group that waits 1 s; torch's default is 10
    minutes for NCCL, 30 for gloo)."""
    from deeplabv1.distributed.context import RANK_WAIT

    assert RANK_WAIT.total_seconds() >= 3600
    spawn(_late_rank, 2, 1.0, str(tmp_path))
    assert (tmp_path / "rank0").read_text() == "timed out"
