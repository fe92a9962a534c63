"""A/B timing of the CRF's numba kernels (crf/lattice_numba.py) against their previous bodies.

Captures the real arguments of one mean-field iteration of the reference case (VOC image
2007_000346, 500x375, DeepLab-LargeFOV terms, "after" normalisation, --labels labels padded as
numpy_meanfield pads them) by running the drop-in once, then times, in this one process and
alternating, the baseline kernels kept below (copies of the bodies at commit 8d11a75, compiled
without the disk cache) and the current ones: the fused pixel pass (a middle iteration: both
slices and both splats), one blur pass of each lattice, and the reduction of the per-thread
splat buffers. With fewer than 8 labels also ``*_unpadded``: the current kernels at the label
count itself against the baseline at the padded width. Every pair is checked for equal
results first (max_abs_diff). Prints one JSON object (ms, median and minimum of --repeats per
kernel; the 1-minute load average before and after).

    .venv/bin/python benchmarks/crf_kernel_bench.py [--threads 1] [--labels 21] [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crf_bench import DATA, LARGEFOV, make_case  # noqa: E402

from deeplabv1.crf import lattice_numba as ln  # noqa: E402


def _baseline_kernels(parallel: bool):
    """The kernel bodies before this round of tuning (commit 8d11a75), compiled here."""
    from numba import njit, prange

    _exp_parts, block, bias, low, one = ln._exp_parts, ln._BLOCK, ln._BIAS, ln._LOW, ln._ONE

    def fused_step(unary, q, offs, wts, lat, bary, acc, offs2, wts2, lat2, bary2, acc2, store):
        n, c = unary.shape
        cp = q.shape[1]
        nt = acc.shape[0]
        step = (n + nt - 1) // nt
        for t in prange(nt):
            if bary.shape[1] > 0:
                acc[t, : acc.shape[1] - 1] = 0
            if bary2.shape[1] > 0:
                acc2[t, : acc2.shape[1] - 1] = 0
            x = np.zeros(cp, dtype=np.float32)
            y = np.zeros(cp, dtype=np.float32)
            blk = np.zeros((block, cp), dtype=np.float32)
            flat = blk.reshape(block * cp)
            bits = np.zeros(block * cp, dtype=np.int32)
            pow2 = bits.view(np.float32)
            part = np.zeros(8, dtype=np.float32)
            hi = min(n, (t + 1) * step)
            for p0 in range(t * step, hi, block):
                nb = min(block, hi - p0)
                for i in range(nb):
                    p = p0 + i
                    for k in range(cp):
                        x[k] = 0
                        y[k] = 0
                    for r in range(wts.shape[1]):
                        w = wts[p, r]
                        v = offs[p, r]
                        for k in range(cp):
                            x[k] += w * lat[v, k]
                    for r in range(wts2.shape[1]):
                        w = wts2[p, r]
                        v = offs2[p, r]
                        for k in range(cp):
                            y[k] += w * lat2[v, k]
                    for k in range(c):
                        x[k] = (x[k] - unary[p, k]) + y[k]
                    for k in range(c, cp):
                        x[k] = low
                    for j in range(8):
                        part[j] = x[j]
                    for k0 in range(8, cp, 8):
                        for j in range(8):
                            part[j] = part[j] if part[j] > x[k0 + j] else x[k0 + j]
                    mx = part[0]
                    for j in range(1, 8):
                        mx = mx if mx > part[j] else part[j]
                    for k in range(cp):
                        blk[i, k] = x[k] - mx
                m = nb * cp
                for k in range(m):
                    e, n2 = _exp_parts(flat[k])
                    flat[k] = e
                    bits[k] = (n2 << 23) + bias
                for k in range(m):
                    flat[k] *= pow2[k]
                for i in range(nb):
                    p = p0 + i
                    for k in range(cp):
                        x[k] = blk[i, k]
                    for k in range(c, cp):
                        x[k] = 0
                    for j in range(8):
                        part[j] = x[j]
                    for k0 in range(8, cp, 8):
                        for j in range(8):
                            part[j] += x[k0 + j]
                    s = ((part[0] + part[1]) + (part[2] + part[3])) + (
                        (part[4] + part[5]) + (part[6] + part[7]))  # fmt: skip
                    inv = one / s
                    for k in range(cp):
                        x[k] *= inv
                    if store:
                        for k in range(cp):
                            q[p, k] = x[k]
                    for r in range(bary.shape[1]):
                        w = bary[p, r]
                        v = offs[p, r]
                        for k in range(cp):
                            acc[t, v, k] += w * x[k]
                    for r in range(bary2.shape[1]):
                        w = bary2[p, r]
                        v = offs2[p, r]
                        for k in range(cp):
                            acc2[t, v, k] += w * x[k]

    def blur(src, dst, n1, n2):
        rows = n1.shape[0]
        c = src.shape[1]
        half = src.dtype.type(0.5)
        for m in prange(rows):
            a = n1[m]
            b = n2[m]
            for k in range(c):
                dst[m, k] = src[m, k] + half * (src[a, k] + src[b, k])

    def reduce_first(acc):
        rows = acc.shape[1]
        for m in prange(rows):
            for t in range(1, acc.shape[0]):
                for k in range(acc.shape[2]):
                    acc[0, m, k] += acc[t, m, k]

    opts = {"parallel": parallel, "nogil": True, "fastmath": False}
    return {f.__name__: njit(**opts)(f) for f in (fused_step, blur, reduce_first)}


def capture(num_labels: int, threads: int) -> dict:
    """Copies of the kernel arguments of the reference case's second mean-field pass."""
    from deeplabv1.crf import densecrf as dcrf
    from deeplabv1.crf import numpy_lattice

    numpy_lattice.set_num_threads(threads)
    numpy_lattice.clear_cache()
    rgb, scores = make_case((1, 1), num_labels, DATA)
    h, w, _ = rgb.shape
    names = ("fused_step", "fused_step_serial", "blur", "blur_serial", "reduce_first")
    real = {k: getattr(ln, k) for k in names}
    calls: dict[str, list] = {}

    def spy(name):
        def run(*args):
            calls.setdefault(name.replace("_serial", ""), []).append(
                [a.copy() if isinstance(a, np.ndarray) else a for a in args])
            return real[name](*args)
        return run

    for k in names:
        setattr(ln, k, spy(k))
    try:
        d = dcrf.DenseCRF2D(w, h, num_labels)
        d.setUnaryEnergy(np.ascontiguousarray(-scores.reshape(num_labels, -1)))
        p = LARGEFOV
        d.addPairwiseGaussian(sxy=p["sg"], compat=p["w2"], normalization=dcrf.NORMALIZE_AFTER)
        d.addPairwiseBilateral(sxy=p["sa"], srgb=p["sb"], rgbim=rgb, compat=p["w1"],
                               normalization=dcrf.NORMALIZE_AFTER)  # fmt: skip
        d.inference(10)
    finally:
        for k in names:
            setattr(ln, k, real[k])
    fused = calls["fused_step"][1]
    fused[-1] = True  # also store q (the stores of the last iteration are timed too)
    # the last two blurs of the last iteration: one axis of each lattice (bilateral, Gaussian)
    blurs = sorted(calls["blur"][-9:], key=lambda a: -a[0].shape[0])
    out = {"fused_step": fused, "blur_bilateral": blurs[0], "blur_gaussian": blurs[-1]}
    if calls.get("reduce_first"):
        out["reduce_first"] = calls["reduce_first"][-1]
    return out


def _width(args: list, case: str, width: int) -> list:
    """The captured arguments with their label columns cut or zero-padded to ``width``
    (q, lattice values and splat buffers; the unary keeps its C columns)."""
    cols = {"fused_step": (1, 4, 6, 9, 11), "reduce_first": (0,)}.get(case, (0, 1))
    out = list(args)
    for i in cols:
        a = args[i]
        if a.shape[-1] >= width:
            out[i] = np.ascontiguousarray(a[..., :width])
        else:
            pad = [(0, 0)] * (a.ndim - 1) + [(0, width - a.shape[-1])]
            out[i] = np.pad(a, pad)
    return out


def _time_once(fn, args) -> float:
    work = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    t = time.perf_counter()
    fn(*work)
    return 1e3 * (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    load0 = Path("/proc/loadavg").read_text().split()[0]
    cases = capture(args.labels, args.threads)
    c = args.labels
    width8 = -(-c // 8) * 8  # the baseline kernel needs a multiple of 8
    narrow = {k: _width(v, k, c) for k, v in cases.items() if k != "reduce_first"}
    cases = {k: _width(v, k, width8) for k, v in cases.items()}
    ln.set_threads(args.threads)
    base = _baseline_kernels(parallel=args.threads > 1)
    serial = "" if args.threads > 1 else "_serial"
    new = {"fused_step": getattr(ln, "fused_step" + serial),
           "blur": getattr(ln, "blur" + serial), "reduce_first": ln.reduce_first}
    report = {"threads": args.threads, "labels": c, "baseline_width": width8,
              "load_start": load0}
    for case, kargs in cases.items():
        kind = case.split("_")[0] if case.startswith("blur") else case
        if case == "reduce_first" and args.threads == 1:
            continue
        old_fn, new_fn = base[kind], new[kind]
        outs = []
        for fn in (old_fn, new_fn):
            work = [a.copy() if isinstance(a, np.ndarray) else a for a in kargs]
            fn(*work)  # compiles / loads, then the results to compare
            outs.append([a for a in work if isinstance(a, np.ndarray)])
        diff = max(float(np.max(np.abs(a - b))) if a.size else 0.0
                   for a, b in zip(*outs))  # fmt: skip
        times = {"old": [], "new": []}
        for _ in range(args.repeats):
            times["old"].append(_time_once(old_fn, kargs))
            times["new"].append(_time_once(new_fn, kargs))
        report[case] = {
            "old_ms": round(float(np.median(times["old"])), 3),
            "new_ms": round(float(np.median(times["new"])), 3),
            "old_min_ms": round(min(times["old"]), 3),
            "new_min_ms": round(min(times["new"]), 3),
            "max_abs_diff": diff,
        }
    if width8 != c:
        # Few labels: the current kernels at width C (no padding) against the baseline at
        # the padded width; results must be equal.
        pairs = {"fused_step_unpadded": (base["fused_step"], cases["fused_step"],
                                         new["fused_step"], narrow["fused_step"])}
        for case in ("blur_bilateral", "blur_gaussian"):
            pairs[case + "_unpadded"] = (base["blur"], cases[case], new["blur"], narrow[case])
        for case, (old_fn, old_args, new_fn, new_args) in pairs.items():
            wo = [a.copy() if isinstance(a, np.ndarray) else a for a in old_args]
            wn = [a.copy() if isinstance(a, np.ndarray) else a for a in new_args]
            old_fn(*wo)
            new_fn(*wn)
            diff = max(float(np.max(np.abs(a[..., : b.shape[-1]] - b))) if b.size else 0.0
                       for a, b in zip(wo, wn) if isinstance(a, np.ndarray))  # fmt: skip
            times = {"old": [], "new": []}
            for _ in range(args.repeats):
                times["old"].append(_time_once(old_fn, old_args))
                times["new"].append(_time_once(new_fn, new_args))
            report[case] = {
                "old_ms": round(float(np.median(times["old"])), 3),
                "new_ms": round(float(np.median(times["new"])), 3),
                "old_min_ms": round(min(times["old"]), 3),
                "new_min_ms": round(min(times["new"]), 3),
                "max_abs_diff": diff,
            }
    report["load_end"] = Path("/proc/loadavg").read_text().split()[0]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
