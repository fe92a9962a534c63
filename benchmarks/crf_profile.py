"""Per-kernel profile of the CPU engine on the reference case; prints JSON.

The reference case of crf_bench.py (VOC 2007_000346, 500x375, 21 labels, 10 iterations,
DeepLab-LargeFOV terms, "after" normalisation) through the pydensecrf drop-in, with every
kernel launch timed (wall time of ``threads.run``, so with several threads the slowest
thread's share) and summed per kernel and per lattice; ``python_s`` is the rest of the call
(array set-up, feature arrays, dispatch). Each kernel's bytes moved and floating-point
operations are counted from the array sizes (the minimum traffic: every table, lattice row
and pixel row read or written once per pass), and compared with this machine's measured
limits: ``bandwidth_gbs`` (a streaming numba kernel that reads and writes 64 MiB) and
``flops_g`` (independent 8-lane multiply-adds in registers), per thread. Median of
--repeats runs after a warm-up, for each --threads count.

    .venv/bin/python benchmarks/crf_profile.py [--threads 1 2] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crf_bench import DATA, crf_once, make_case  # noqa: E402

from deeplabv1.crf import densecrf as dcrf  # noqa: E402
from deeplabv1.crf import set_num_threads  # noqa: E402
from deeplabv1.crf.engine import cache, threads  # noqa: E402


def _timed_run(record):
    """threads.run with every launch's wall time added to record[kernel name]."""
    real = threads.run

    def run(kernel, jobs):
        t = time.perf_counter()
        real(kernel, jobs)
        name = getattr(kernel, "__name__", str(kernel))
        if name == "blur":  # per lattice: the rows tell them apart
            name = f"blur_{jobs[0][2].shape[0]}"
        record[name] += time.perf_counter() - t
        record["_calls_" + name] += 1

    return run


def profile(rgb, unary) -> dict:
    """One reference CRF (cold lattice cache) with per-kernel times in seconds."""
    record: defaultdict[str, float] = defaultdict(float)
    threads.run, real = _timed_run(record), threads.run
    try:
        cache.clear_cache()
        t = time.perf_counter()
        setup, infer, _ = crf_once(dcrf, rgb, unary)
        total = time.perf_counter() - t
    finally:
        threads.run = real
    kernels = {k: v for k, v in record.items() if not k.startswith("_calls_")}
    calls = {k[7:]: int(v) for k, v in record.items() if k.startswith("_calls_")}
    return {"total_s": total, "setup_s": setup, "inference_s": infer,
            "python_s": total - sum(kernels.values()), "kernels_s": kernels,
            "calls": calls}  # fmt: skip


def machine_limits(nt: int) -> dict:
    """Streaming bandwidth and 8-lane multiply-add rate of this machine, nt threads."""
    from deeplabv1.crf.engine.jit import numba

    @numba.njit(nogil=True, cache=False)
    def stream(src, dst, lo, hi):  # pragma: no cover - compiled
        for i in range(lo, hi):
            dst[i] = src[i] * np.float32(0.5)

    @numba.njit(nogil=True, cache=False)
    def fmas(out, n):  # pragma: no cover - compiled
        acc = np.zeros((8, 8), np.float32)  # 8 independent 8-lane chains
        for _ in range(n):
            for j in range(8):
                for k in range(8):
                    acc[j, k] = acc[j, k] * np.float32(0.999) + np.float32(0.001)
        out[0] = acc.sum()

    src = np.ones(1 << 24, np.float32)  # 64 MiB
    dst = np.empty_like(src)
    parts = threads.ranges(src.size, nt)
    jobs = [(src, dst, lo, hi) for lo, hi in parts]
    threads.run(stream, jobs)
    bw = []
    for _ in range(5):
        t = time.perf_counter()
        threads.run(stream, jobs)
        bw.append(2 * src.nbytes / (time.perf_counter() - t) / 1e9)
    out = np.zeros(1, np.float32)
    fmas(out, 10)
    reps = 2_000_000
    t = time.perf_counter()
    threads.run(fmas, [(np.zeros(1, np.float32), reps) for _ in range(nt)])
    flops = nt * reps * 64 * 2 / (time.perf_counter() - t) / 1e9
    return {"bandwidth_gbs": max(bw), "flops_g": flops}


def traffic(rgb, unary) -> dict:
    """Minimum bytes and flops per launch of the main kernels (float32 values, 24 lanes)."""
    h, w, _ = rgb.shape
    p = h * w
    d = dcrf.DenseCRF2D(w, h, unary.shape[0])
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=3, compat=3, normalization=dcrf.NORMALIZE_AFTER)
    d.addPairwiseBilateral(sxy=121, srgb=5, rgbim=rgb, compat=4,
                           normalization=dcrf.NORMALIZE_AFTER)  # fmt: skip
    lats = [t.lattice for t in d._np_terms]
    cp, c = 24, unary.shape[0]
    out = {}
    verts = sum(lat.offs.shape[1] for lat in lats)
    rows = sum(lat.num_lattice for lat in lats)
    # per pixel: unary row, 3 index/weight tables per vertex; per lattice row: slice read and
    # splat read-modify-write of 24 floats
    out["fused_step_wide"] = {
        "bytes": p * (4 * c + verts * 12) + rows * cp * 4 * 3,
        "flops": p * (verts * cp * 4 + cp * 30),
    }
    for lat in lats:
        out[f"blur_{lat.num_lattice}"] = {"bytes": lat.num_lattice * (cp * 4 * 2 + 8),
                                          "flops": lat.num_lattice * cp * 3}  # fmt: skip
    out["reduce_rows"] = {"bytes": rows * cp * 4 * 3, "flops": rows * cp}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    rgb, scores = make_case((1, 1), 21, DATA)
    unary = np.ascontiguousarray(-scores.reshape(21, -1))
    result = {"machine": {"cpu_count": os.cpu_count(), "loadavg_1min": os.getloadavg()[0]}}
    counts = traffic(rgb, unary)
    for nt in args.threads:
        set_num_threads(nt)
        profile(rgb, unary)  # warm-up (kernels loaded, buffers sized)
        runs = [profile(rgb, unary) for _ in range(args.repeats)]
        names = sorted({k for r in runs for k in r["kernels_s"]})
        med = {k: statistics.median(r["kernels_s"].get(k, 0.0) for r in runs) for k in names}
        limits = machine_limits(nt)
        kernels = {}
        for k, sec in sorted(med.items(), key=lambda kv: -kv[1]):
            entry = {"s": round(sec, 5), "calls": runs[0]["calls"].get(k, 0)}
            if k in counts and entry["calls"]:
                per = sec / entry["calls"]
                gbs = counts[k]["bytes"] / per / 1e9
                gf = counts[k]["flops"] / per / 1e9
                entry.update(
                    ms_per_call=round(1e3 * per, 3),
                    gbs=round(gbs, 2),
                    of_bandwidth=round(gbs / limits["bandwidth_gbs"], 3),
                    gflops=round(gf, 2),
                    of_flops=round(gf / limits["flops_g"], 3),
                )
            kernels[k] = entry
        result[f"threads_{nt}"] = {
            "total_s": statistics.median(r["total_s"] for r in runs),
            "setup_s": statistics.median(r["setup_s"] for r in runs),
            "inference_s": statistics.median(r["inference_s"] for r in runs),
            "python_s": statistics.median(r["python_s"] for r in runs),
            "kernels": kernels,
            "limits": {k: round(v, 2) for k, v in limits.items()},
        }
    result["machine"]["loadavg_1min_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
