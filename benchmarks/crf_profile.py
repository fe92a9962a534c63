"""Per-kernel profile of the CPU engine on the reference case; prints JSON.

The reference case of crf_bench.py (VOC 2007_000346, 500x375, 21 labels, network-like
unary, 10 iterations, DeepLab-LargeFOV terms, "after" normalisation) through the drop-in, with every
kernel launch timed (wall time of ``threads.run``, so with several threads the slowest
thread's share) and summed per kernel and per lattice; ``python_s`` is the rest of the call
(array set-up, feature arrays, dispatch). Each kernel's bytes moved and floating-point
operations are counted from the array sizes (the minimum traffic: every table, lattice row
and pixel row read or written once per pass), and compared with this machine's measured
limits: ``bandwidth_gbs`` (a streaming numba kernel that reads and writes 64 MiB),
``cache_bandwidth_gbs`` (the same on 2 MiB that stay in cache) and ``flops_g`` (16
independent streams of 8-lane multiply-then-add on rows in L1), on the same threads. Median of
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
    """This machine's streaming bandwidth (64 MiB read + written, from memory), the same for
    2 MiB that stay in cache, and its 8-lane multiply-then-add rate (simd.axpy8 on rows in L1,
    16 independent streams), on nt threads."""
    from deeplabv1.crf.engine.jit import numba
    from deeplabv1.crf.engine.simd import axpy8

    @numba.njit(nogil=True, cache=False)
    def stream(src, dst, lo, hi, reps):  # pragma: no cover - compiled
        for _ in range(reps):
            for i in range(lo, hi):
                dst[i] = src[i] * np.float32(0.5)

    @numba.njit(nogil=True, cache=False)
    def fmas(buf, n):  # pragma: no cover - compiled
        for _ in range(n):
            for j in range(16):
                axpy8(buf, j * 8, buf, 128 + j * 8, np.float32(0.999))

    def copy_rate(n: int, reps: int) -> float:
        src = np.ones(n, np.float32)
        dst = np.empty_like(src)
        jobs = [(src, dst, lo, hi, reps) for lo, hi in threads.ranges(n, nt)]
        threads.run(stream, jobs)
        best = 0.0
        for _ in range(5):
            t = time.perf_counter()
            threads.run(stream, jobs)
            best = max(best, 2 * src.nbytes * reps / (time.perf_counter() - t) / 1e9)
        return best

    reps = 1_000_000
    bufs = [np.full(256, 1e-3, np.float32) for _ in range(nt)]
    fmas(bufs[0], 10)
    t = time.perf_counter()
    threads.run(fmas, [(b, reps) for b in bufs])
    flops = nt * reps * 16 * 8 * 2 / (time.perf_counter() - t) / 1e9
    return {"bandwidth_gbs": copy_rate(1 << 24, 1), "cache_bandwidth_gbs": copy_rate(1 << 18, 64),
            "flops_g": flops}  # fmt: skip


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
    cp = 24
    out = {}
    verts = sum(lat.offs.shape[1] for lat in lats)
    rows = sum(lat.num_lattice for lat in lats)
    # per pixel: padded unary row, a vertex id and a barycentric weight per vertex (the slice
    # weights are formed from them), a normaliser factor per term; per lattice row: slice read
    # and splat read-modify-write of 24 floats
    out["fused_step_wide"] = {
        "bytes": p * (4 * cp + verts * 8 + len(lats) * 4) + rows * cp * 4 * 3,
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
    rgb, scores = make_case((1, 1), 21, DATA, "network")
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
