"""A/B timing of the CRF's numba kernels (crf/lattice_numba.py) against a git revision's.

Captures the real arguments of one mean-field iteration of the reference case (VOC image
2007_000346, 500x375, DeepLab-LargeFOV terms, "after" normalisation, --labels labels padded as
numpy_meanfield pads them) by running the drop-in once, then times, in this one process and
alternating, the kernels of ``git show REV:src/deeplabv1/crf/lattice_numba.py`` (--baseline
REV, default the pre-session commit 8d11a75; loaded as a temporary module, compiled without
touching the working tree's disk cache) and the current ones: the fused pixel pass (a middle
iteration: both slices and both splats), one blur pass of each lattice, and the reduction of
the per-thread splat buffers. With fewer than 8 labels also ``*_unpadded``: the current
kernels at the label count itself against the baseline at the padded width (the 8d11a75
kernels need a multiple of 8). Every pair is checked for equal results first
(max_abs_diff). Prints one JSON object (ms, median and minimum of --repeats per kernel; the
1-minute load average before and after).

    .venv/bin/python benchmarks/crf_kernel_bench.py [--threads 1] [--labels 21] [--repeats 15]
        [--baseline REV]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crf_bench import DATA, LARGEFOV, make_case  # noqa: E402

from deeplabv1.crf import lattice_numba as ln  # noqa: E402


def _baseline_kernels(rev: str, parallel: bool) -> dict:
    """fused_step, blur and reduce_first of lattice_numba.py at git revision ``rev``, imported
    from a temporary copy (its own numba cache there; serial twins where the revision has
    them and ``parallel`` is off)."""
    root = Path(__file__).resolve().parents[1]
    text = subprocess.run(["git", "show", f"{rev}:src/deeplabv1/crf/lattice_numba.py"],
                          cwd=root, capture_output=True, text=True, check=True).stdout  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="crf_kernel_bench_"))
    path = folder / f"lattice_numba_{rev}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"_crf_baseline_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # numba's cache locator needs the module registered
    spec.loader.exec_module(module)
    out = {}
    for name in ("fused_step", "blur", "reduce_first"):
        twin = getattr(module, name + "_serial", None)
        out[name] = twin if twin is not None and not parallel and name != "reduce_first" else (
            getattr(module, name))  # fmt: skip
    return out


def _call(fn, args: list) -> None:
    """fn on the arguments it takes: an older fused_step has no trailing output argument."""
    fn(*args[: fn.py_func.__code__.co_argcount])


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
    # Store Q pixel-major (the stores of the last pass are timed too, the way the older
    # kernels store it; the engine itself keeps no pixel-major Q with two terms).
    fused[1] = np.zeros((fused[0].shape[0], fused[4].shape[1]), np.float32)
    fused[12] = True
    fused[13] = np.zeros((0, 1, 1), np.float32)
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
    _call(fn, work)
    return 1e3 * (time.perf_counter() - t)


def _ab(old_fn, old_args, new_fn, new_args, repeats: int) -> dict:
    """Both kernels once (compile / load; their array results compared, the new ones cut to
    the old widths' first columns), then ``repeats`` alternating timings."""
    outs = []
    for fn, kargs in ((old_fn, old_args), (new_fn, new_args)):
        work = [a.copy() if isinstance(a, np.ndarray) else a for a in kargs]
        _call(fn, work)
        outs.append([a for a in work if isinstance(a, np.ndarray)])
    diff = max(float(np.max(np.abs(a[..., : b.shape[-1]] - b))) if b.size else 0.0
               for a, b in zip(*outs))  # fmt: skip
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(repeats):
        times["old"].append(_time_once(old_fn, old_args))
        times["new"].append(_time_once(new_fn, new_args))
    return {
        "old_ms": round(float(np.median(times["old"])), 3),
        "new_ms": round(float(np.median(times["new"])), 3),
        "old_min_ms": round(min(times["old"]), 3),
        "new_min_ms": round(min(times["new"]), 3),
        "max_abs_diff": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--baseline", default="8d11a75", help="git revision of the old kernels")
    args = parser.parse_args()
    load0 = Path("/proc/loadavg").read_text().split()[0]
    cases = capture(args.labels, args.threads)
    c = args.labels
    width8 = -(-c // 8) * 8  # the 8d11a75 kernels need a multiple of 8
    narrow = {k: _width(v, k, c) for k, v in cases.items() if k != "reduce_first"}
    cases = {k: _width(v, k, width8) for k, v in cases.items()}
    ln.set_threads(args.threads)
    base = _baseline_kernels(args.baseline, parallel=args.threads > 1)
    serial = "" if args.threads > 1 else "_serial"
    new = {"fused_step": getattr(ln, "fused_step" + serial),
           "blur": getattr(ln, "blur" + serial), "reduce_first": ln.reduce_first}
    report = {"threads": args.threads, "labels": c, "baseline": args.baseline,
              "baseline_width": width8, "load_start": load0}
    for case, kargs in cases.items():
        if case == "reduce_first" and args.threads == 1:
            continue
        kind = case.split("_")[0] if case.startswith("blur") else case
        report[case] = _ab(base[kind], kargs, new[kind], kargs, args.repeats)
    if c < 8 and width8 != c:  # few labels: the current kernels at width C, the baseline padded
        for case in ("fused_step", "blur_bilateral", "blur_gaussian"):
            kind = case.split("_")[0] if case.startswith("blur") else case
            report[case + "_unpadded"] = _ab(base[kind], cases[case], new[kind], narrow[case],
                                             args.repeats)  # fmt: skip
    report["load_end"] = Path("/proc/loadavg").read_text().split()[0]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
