"""``eval`` and ``crf-search`` under torchrun (gloo, CPU) give a single process's results exactly.

Synthetic data (7 images, 4 classes) and a tiny network. The single-process reference runs with
one torch thread, as every rank does (torchrun's default, ``OMP_NUM_THREADS=1``): the float sums
of the network's CPU kernels and of the CRF follow the thread count, so the exact equality the
docs promise holds at equal thread counts only.
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
from gloo_helpers import cli, spawn

from deeplabv1.checkpoint import save_checkpoint
from deeplabv1.data.synth import make_synthetic_voc
from deeplabv1.errors import DeepLabError
from deeplabv1.evaluate.config import CRFSearchConfig, EvalConfig
from deeplabv1.evaluate.run import run_crf_search, run_eval
from deeplabv1.models import build_model

NUM_CLASSES = 4
NUM_IMAGES = 7
SETTINGS = dict(split="trainval", test_size=41, crf=True, w1=4.0, sa=10.0, sb=20.0, w2=3.0,
                sg=1.0, crf_iters=5, trimap=True, trimap_max_width=6, save_predictions=True,
                progress=False, device="cpu")  # fmt: skip
GRID = dict(split="trainval", num_images=NUM_IMAGES, w1_min=2.0, w1_max=6.0, w1_step=4.0,
            sa_min=5.0, sa_max=15.0, sa_step=10.0, sb_min=10.0, sb_max=30.0, sb_step=20.0,
            w2=3.0, sg=1.0, iters=3, refine_rounds=1, progress=False)  # fmt: skip
RANK0_FILES = {"config.yaml", "results.json", "results.md", "trimap.png", "eval_summary.json",
               "predictions"}  # fmt: skip


def flags(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        out += [flag, str(value).lower() if isinstance(value, bool) else str(value)]
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Data, weights and the single-process reference run (network + CRF + trimap)."""
    root = tmp_path_factory.mktemp("evaldist")
    data = make_synthetic_voc(root / "voc", NUM_IMAGES, size=(40, 32), num_classes=NUM_CLASSES,
                              seed=5)  # fmt: skip
    torch.manual_seed(0)
    model = build_model("deeplab-largefov", num_classes=NUM_CLASSES, width=1 / 16).eval()
    weights = root / "model.pt"
    save_checkpoint(weights, model.state_dict(), arch=model.arch, num_classes=NUM_CLASSES,
                    width=model.width, model_kwargs=model.model_kwargs)  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = run_eval(
            EvalConfig(
                weights=str(weights),
                data=str(data),
                **SETTINGS,
                save_scores=str(root / "scores"),
                out=str(root / "one"),
            )
        )
        search = run_crf_search(
            CRFSearchConfig(
                scores=str(root / "scores"), data=str(data), out=str(root / "search1"), **GRID
            )
        )
    finally:
        torch.set_num_threads(threads)
    assert res["num_images"] == NUM_IMAGES
    return {"root": root, "data": data, "weights": weights, "results": res, "search": search}


def eval_argv(single, out: Path, scores: Path, *extra: str) -> list[str]:
    return ["eval", "--weights", str(single["weights"]), "--data", str(single["data"]),
            *flags(SETTINGS), "--save-scores", str(scores), "-o", str(out), *extra]  # fmt: skip


def assert_same_as_single(single, out: Path, scores: Path) -> dict:
    """Same confusion matrices, IoUs, trimap; same per-image PNGs and score maps."""
    ref = single["results"]
    got = json.loads((out / "results.json").read_text())
    assert got["methods"] == ref["methods"]  # confusion matrices, mean / per-class IoU, ...
    assert got["trimap"] == ref["trimap"]
    assert got["num_images"] == got["data"]["num_images"] == NUM_IMAGES
    one = single["root"] / "one" / "predictions"
    for method in ("network", "crf"):
        names = sorted(p.name for p in (one / method).glob("*.png"))
        assert len(names) == NUM_IMAGES
        assert sorted(p.name for p in (out / "predictions" / method).glob("*.png")) == names
        for name in names:
            assert (out / "predictions" / method / name).read_bytes() == (
                one / method / name).read_bytes(), name  # fmt: skip
    for npz in sorted((single["root"] / "scores").glob("*.npz")):
        with np.load(npz) as a, np.load(scores / npz.name) as b:
            np.testing.assert_array_equal(a["scores"], b["scores"])
    return json.loads((out / "eval_summary.json").read_text())


@pytest.mark.slow
def test_two_processes_equal_one_process_eval_and_crf_search(single, tmp_path):
    out, scores = tmp_path / "two", tmp_path / "scores2"
    spawn(cli, 2, eval_argv(single, out, scores))
    summary = assert_same_as_single(single, out, scores)
    assert summary["world_size"] == 2 and summary["counts"]["processed"] == NUM_IMAGES
    assert [r["processed"] for r in summary["ranks"]] == [4, 3]
    written = {p.name for p in out.iterdir()} - {".deeplabv1-outputs", ".deeplabv1.lock"}
    assert written == RANK0_FILES  # no stray per-rank files
    # crf-search: the grid shared out over 2 ranks finds the same points and table
    argv = ["crf-search", "--scores", str(single["root"] / "scores"), "--data",
            str(single["data"]), *flags(GRID), "-o", str(tmp_path / "search2")]  # fmt: skip
    spawn(cli, 2, argv)
    best = json.loads((tmp_path / "search2" / "best.json").read_text())
    ref = single["search"]
    assert best["best"]["mean_iou"] == ref["best"]["mean_iou"]
    assert {k: best["best"][k] for k in ("w1", "sa", "sb", "w2", "sg")} == {
        k: ref["best"][k] for k in ("w1", "sa", "sb", "w2", "sg")}  # fmt: skip
    assert best["rounds"] == ref["rounds"]
    md_one = (single["root"] / "search1" / "search.md").read_text()
    assert (tmp_path / "search2" / "search.md").read_text() == md_one
    lines = (tmp_path / "search2" / "points.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]
    ref_strip = [{k: v for k, v in r.items() if k != "seconds"} for r in ref["records"]]
    assert strip == [dict(r, setup=ref["setup"]) for r in ref_strip]
    # resumed under torchrun: every point is already there, none is evaluated again
    points = (tmp_path / "search2" / "points.jsonl").read_bytes()
    spawn(cli, 2, [*argv, "--resume"])
    assert (tmp_path / "search2" / "points.jsonl").read_bytes() == points
    assert json.loads((tmp_path / "search2" / "best.json").read_text())["best"] == best["best"]


@pytest.mark.slow
def test_torchrun_three_processes_uneven_split(single, tmp_path):
    """The real launcher: 7 images over 3 ranks (3, 2, 2), CRF batched 2 images a call."""
    out, scores = tmp_path / "three", tmp_path / "scores3"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3",
           "--standalone", "-m", "deeplabv1",
           *eval_argv(single, out, scores, "--crf-batch-size", "2")]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("# Evaluation") == 1  # only rank 0 reports
    summary = assert_same_as_single(single, out, scores)
    assert [r["processed"] for r in summary["ranks"]] == [3, 2, 2]
    assert summary["processed"] == sorted(p.stem for p in scores.glob("*.npz"))


def _crash_after_first_image(rank: int, world: int, argv: list[str]) -> None:
    """Rank 1 dies (SIGKILL, no clean-up) right after its first image's outputs are written."""
    if rank == 1:
        from deeplabv1.evaluate import evaluator

        real = evaluator.save_label_png

        def save_then_die(path, labels):
            real(path, labels)
            if Path(path).parent.name == "crf":  # the last output of an image
                os.kill(os.getpid(), signal.SIGKILL)

        evaluator.save_label_png = save_then_die
    cli(rank, world, argv)


@pytest.mark.slow
def test_killed_rank_then_resume_completes_without_redoing_finished_images(single, tmp_path):
    out, scores = tmp_path / "crash", tmp_path / "scores_crash"
    argv = eval_argv(single, out, scores)
    with pytest.raises(Exception, match="SIGKILL|signal"):
        spawn(_crash_after_first_image, 2, argv)
    assert not (out / "results.json").exists()

    def complete(sid: str) -> bool:
        return all((out / "predictions" / m / f"{sid}.png").is_file() for m in ("network", "crf")
                   ) and (scores / f"{sid}.npz").is_file()  # fmt: skip

    ids = sorted(p.stem for p in (single["root"] / "scores").glob("*.npz"))
    finished = [s for s in ids if complete(s)]
    assert ids[4] in finished and len(finished) < NUM_IMAGES  # rank 1's first image survived
    stamps = {s: (out / "predictions" / "crf" / f"{s}.png").stat().st_mtime_ns for s in finished}
    spawn(cli, 2, [*argv, "--resume"])
    summary = assert_same_as_single(single, out, scores)
    assert summary["skipped"] == finished
    assert summary["processed"] == [s for s in ids if s not in finished]
    for s, stamp in stamps.items():  # finished images were not redone
        assert (out / "predictions" / "crf" / f"{s}.png").stat().st_mtime_ns == stamp


def test_resume_refuses_other_settings_and_needs_predictions(single, tmp_path):
    base = dict(weights=str(single["weights"]), data=str(single["data"]), **SETTINGS,
                num_images=2, out=str(tmp_path / "r"))  # fmt: skip
    run_eval(EvalConfig(**base))
    again = run_eval(EvalConfig(**base, resume=True))  # all done: everything reused
    summary = json.loads((tmp_path / "r" / "eval_summary.json").read_text())
    assert summary["counts"] == {"processed": 0, "skipped": 2, "failed": 0}
    ref = run_eval(EvalConfig(**{**base, "out": str(tmp_path / "fresh")}))
    assert again["methods"] == ref["methods"] and again["trimap"] == ref["trimap"]
    with pytest.raises(DeepLabError, match="other settings.*sa"):
        run_eval(EvalConfig(**{**base, "sa": 11.0}, resume=True))
    with pytest.raises(DeepLabError, match="needs --save-predictions"):
        run_eval(EvalConfig(**{**base, "save_predictions": False}, resume=True))
