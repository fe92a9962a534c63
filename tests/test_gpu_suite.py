"""The GPU suite's dry run (every step, tiny, on the CPU) passes, and a failing step never
stops the suite."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

SUITE = REPO / "benchmarks" / "gpu_suite.py"
STEPS = ["setup", "env", "cuda_tests", "crf_batch", "eval", "train_fp32", "train_bf16", "nccl"]


@pytest.mark.slow
def test_dry_run_runs_every_step_and_reports_every_figure(tmp_path):
    out = tmp_path / "suite.json"
    proc = subprocess.run([sys.executable, str(SUITE), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    report = json.loads(out.read_text())
    assert proc.returncode == 0, (report["failures"], proc.stdout[-3000:])
    assert list(report["steps"]) == STEPS and report["failures"] == []
    assert report["dry_run"] is True and report["steps"]["setup"]["status"] == "skipped"
    assert all(report["steps"][s]["status"] == "ok" for s in STEPS[1:])
    fig = report["figures"]
    for key in ("crf_ms_per_image_batch1", "crf_ms_per_image_batch2",
                "eval_crf_images_per_s_1proc", "train_fp32_images_per_s",
                "train_bf16_images_per_s"):  # fmt: skip
        assert fig[key] > 0, key
    # on the CPU the batched CRF is the CPU engine itself: the same labels
    assert fig["crf_label_agreement_batch2"] == 1.0 and fig["eval_identical_results"] is True
    assert fig["nccl_checks"] == {"all_reduce_exact": True, "gather_broadcast": True,
                                  "ddp_grads_match": True}  # fmt: skip
    assert fig["cuda_tests"].get("failed", 0) == 0 and fig["cuda_tests"]["skipped"] >= 1
    assert report["steps"]["train_bf16"]["result"]["bf16"] is True


def test_failing_steps_are_recorded_and_the_suite_goes_on(tmp_path):
    out = tmp_path / "suite.json"
    proc = subprocess.run([sys.executable, str(SUITE), "--dry-run", "--out", str(out),
                           "--python", str(tmp_path / "no-such-python")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1
    report = json.loads(out.read_text())
    assert list(report["steps"]) == STEPS
    assert report["failures"] == STEPS[1:]  # each step ran, failed and was recorded
    assert all("no-such-python" in report["steps"][s]["error"] for s in STEPS[1:])
