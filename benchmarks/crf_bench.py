"""Dense-CRF speed, start-up and memory: ours (deeplabv1.crf) against pydensecrf2, one run.

Reference case: a real VOC image (2007_000346, 500x375 RGB), 21 labels, 10 mean-field
iterations, DeepLab-LargeFOV parameters (Gaussian sxy 3 compat 3; bilateral sxy 121 srgb 5
compat 4), "after" normalisation, both through the same pydensecrf API (ours via the drop-in).
Two kinds of unary: ``network`` (what a segmentation network gives: confident logits at
stride 8, bilinearly upsampled, smooth errors) and ``random`` (the one-hot ground truth plus
independent per-pixel noise).

- speed: both implementations in one worker process, alternating (ours, pydensecrf2) per
  repeat, each repeat on a new image (one colour bit toggled: ours rebuilds the bilateral
  lattice; the position-only lattice of the image size stays cached, the batch case); setup
  (constructor + unary + both terms, i.e. the lattices) and inference timed separately;
  ``speedup`` is the median over repeats of pydensecrf2's time over ours in the same pair.
  Ours with 1 and with 2 threads (pydensecrf2 has one), both unary kinds; with
  ``--scaling`` also 2x and 4x the pixels and 2 labels.
- start-up: fresh processes. ``import_s``: importing the drop-in (pydensecrf2: its module);
  ``cold_first_call_s``: import + the first reference CRF with an empty kernel cache (numba
  compiles the kernels; NUMBA_CACHE_DIR points at a new folder); ``warm_first_call_s``: the
  first reference CRF of a process when the kernels are cached (``_without_scipy``: as in an
  installation without scipy, ``pip install deeplabv1``); ``..._overhead_s``: the first
  call's time minus the second's in the same process (lattice cache cleared: what a process
  pays once, i.e. numba's import, loading the kernels, first touches of memory; ``_cpu_s``:
  the same in CPU time of all threads, less sensitive to a busy machine); median of 3 (1
  cold).
- memory: peak RSS of a process that runs the reference case only, per implementation
  (ours asserts that torch was never imported).

Labels are compared with pydensecrf2's in every run. Prints one JSON object with the
targets and whether each is met (speedups with 1 and 2 threads, the lower of the two unaries;
start-up times; peak RSS as a multiple of pydensecrf2's, where it is installed).

    .venv/bin/python benchmarks/crf_bench.py [--repeats 9] [--scaling] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc_samples"
SAMPLE = "2007_000346"
LARGEFOV = dict(w1=4.0, sa=121.0, sb=5.0, w2=3.0, sg=3.0)
TARGETS = {"speedup_2_threads": 3.0, "speedup_1_thread": 2.5, "cold_first_call_s": 10.0,
           "warm_first_call_s": 0.3, "import_s": 0.3, "peak_rss_vs_pydensecrf": 1.0}  # fmt: skip


def make_case(tiles: tuple[int, int], num_labels: int, data: Path, kind: str = "random"):
    """(rgb (H, W, 3) uint8, scores (L, H, W) float32): the 500x375 sample tiled, with
    ``network``-like or ``random`` scores (see the module docstring)."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(data / f"{SAMPLE}.png").convert("RGB").resize((500, 375)))
    lab = np.asarray(Image.open(data / f"{SAMPLE}_label.png").resize((500, 375), Image.NEAREST))
    lab = lab.astype(np.int64) % num_labels
    rng = np.random.default_rng(0)
    onehot = np.eye(num_labels, dtype=np.float32)[lab].transpose(2, 0, 1)
    if kind == "random":
        scores = 3.0 * onehot + rng.normal(scale=1.5, size=onehot.shape).astype(np.float32)
    else:  # stride-8 logits: 8 x the pooled one-hot plus noise, bilinearly upsampled
        h8, w8 = -(-375 // 8), -(-500 // 8)
        pad = np.zeros((num_labels, h8 * 8, w8 * 8), np.float32)
        pad[:, :375, :500] = onehot
        low = 8.0 * pad.reshape(num_labels, h8, 8, w8, 8).mean((2, 4))
        low += rng.normal(scale=1.0, size=low.shape).astype(np.float32)
        scores = np.stack([np.asarray(Image.fromarray(ch, mode="F").resize((500, 375),
                                                                           Image.BILINEAR))
                           for ch in low]).astype(np.float32)  # fmt: skip
    ty, tx = tiles
    return np.ascontiguousarray(np.tile(rgb, (ty, tx, 1))), np.tile(scores, (1, ty, tx))


def crf_once(dcrf, img, unary):
    """One CRF through the pydensecrf API (LargeFOV parameters, "after", 10 iterations):
    (setup seconds, inference seconds, Q)."""
    import numpy as np

    h, w, _ = img.shape
    p = LARGEFOV
    t0 = time.perf_counter()
    d = dcrf.DenseCRF2D(w, h, unary.shape[0])
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=p["sg"], compat=p["w2"], normalization=dcrf.NORMALIZE_AFTER)
    d.addPairwiseBilateral(sxy=p["sa"], srgb=p["sb"], rgbim=img, compat=p["w1"],
                           normalization=dcrf.NORMALIZE_AFTER)  # fmt: skip
    t1 = time.perf_counter()
    q = np.array(d.inference(10))
    return t1 - t0, time.perf_counter() - t1, q


def speed_worker(tiles, num_labels: int, kind: str, repeats: int, data: Path, threads: int):
    """Ours and pydensecrf2 alternating in this process: timings, speedups, label agreement."""
    import numpy as np

    from deeplabv1.crf import densecrf as ours
    from deeplabv1.crf import set_num_threads

    try:
        import pydensecrf.densecrf as theirs
    except ImportError:
        theirs = None
    set_num_threads(threads)
    rgb, scores = make_case(tiles, num_labels, data, kind)
    unary = np.ascontiguousarray(-scores.reshape(num_labels, -1))

    def run(module, k: int):
        img = rgb.copy()
        img[0, 0, 0] ^= k & 1  # a new image: the bilateral lattice is rebuilt
        return crf_once(module, img, unary)

    for module in (ours, theirs):  # warm-up: kernels loaded, first-touch of the size
        if module is not None:
            run(module, 0)
    rows = {"ours": [], "pydensecrf": []}
    same, max_dq = [], 0.0
    for k in range(1, repeats + 1):
        a = run(ours, k)
        rows["ours"].append(a[:2])
        if theirs is not None:
            b = run(theirs, k)
            rows["pydensecrf"].append(b[:2])
            same.append(float((a[2].argmax(0) == b[2].argmax(0)).mean()))
            max_dq = max(max_dq, float(np.abs(a[2] - b[2]).max()))
    out = {"pixels": rgb.shape[0] * rgb.shape[1], "labels": num_labels, "unary": kind,
           "threads": threads, "torch_imported": "torch" in sys.modules}  # fmt: skip
    for side, times in rows.items():
        if times:
            out[side] = {"setup_s": statistics.median(t[0] for t in times),
                         "inference_s": statistics.median(t[1] for t in times),
                         "total_s": statistics.median(t[0] + t[1] for t in times),
                         "total_s_all": [round(t[0] + t[1], 4) for t in times]}  # fmt: skip
    if rows["pydensecrf"]:
        ratios = [sum(b) / sum(a) for a, b in zip(rows["ours"], rows["pydensecrf"])]
        out.update(speedup=statistics.median(ratios), speedup_min=min(ratios),
                   speedup_max=max(ratios), same_labels_fraction=min(same),
                   max_abs_dq=max_dq)  # fmt: skip
    return out


def memory_worker(impl: str, data: Path) -> dict:
    """Peak RSS of a process that imports one implementation and runs the reference case."""
    import numpy as np

    if impl == "pydensecrf":
        import pydensecrf.densecrf as dcrf
    else:
        from deeplabv1.crf import densecrf as dcrf
    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rgb, scores = make_case((1, 1), 21, data, "network")
    crf_once(dcrf, rgb, np.ascontiguousarray(-scores.reshape(21, -1)))
    if impl != "pydensecrf":
        assert "torch" not in sys.modules, "the drop-in imported torch"
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_imports_mib": rss_imports}  # fmt: skip


def startup_worker(impl: str, data: Path, no_scipy: bool = False) -> dict:
    """Import time and the first reference CRF of this (fresh) process; ``no_scipy``: as
    where scipy is not installed (``pip install deeplabv1``; numba imports scipy.linalg on
    its first use when it is there)."""
    if no_scipy:
        sys.modules["scipy"] = None  # import scipy raises ImportError, as when absent
    t0 = time.perf_counter()
    if impl == "pydensecrf":
        import pydensecrf.densecrf as dcrf
    else:
        from deeplabv1.crf import densecrf as dcrf
    t1 = time.perf_counter()
    import numpy as np

    rgb, scores = make_case((1, 1), 21, data, "network")
    unary = np.ascontiguousarray(-scores.reshape(21, -1))
    t2, c2 = time.perf_counter(), time.process_time()
    crf_once(dcrf, rgb, unary)
    c3 = time.process_time()
    if impl != "pydensecrf":  # the second call builds both lattices again, as the first
        from deeplabv1.crf.engine.cache import clear_cache

        clear_cache()
    t3, c4 = time.perf_counter(), time.process_time()
    crf_once(dcrf, rgb, unary)
    return {"import_s": t1 - t0, "first_call_s": t3 - t2,
            "second_call_s": time.perf_counter() - t3,
            "overhead_cpu_s": (c3 - c2) - (time.process_time() - c4)}  # fmt: skip


def _subprocess(args: list[str], env: dict | None = None) -> dict | None:
    """This script with ``args`` in a fresh interpreter; its JSON (None: pydensecrf missing)."""
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})  # fmt: skip
    if out.returncode != 0:
        if "No module named 'pydensecrf'" in out.stderr:
            return None
        raise RuntimeError(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def startup(data: Path) -> dict:
    """Cold and warm first calls and import times, each in fresh processes."""
    ours = ["--worker", "startup", "--impl", "ours", "--data", str(data)]
    with tempfile.TemporaryDirectory() as cache:
        env = {"NUMBA_CACHE_DIR": cache}
        cold = _subprocess(ours, env)
        warm = [_subprocess(ours, env) for _ in range(3)]
        bare = [_subprocess([*ours, "--no-scipy"], env) for _ in range(3)]
    theirs = [_subprocess(["--worker", "startup", "--impl", "pydensecrf", "--data", str(data)])
              for _ in range(3)]  # fmt: skip
    out = {"ours": {"cold_first_call_s": cold["import_s"] + cold["first_call_s"],
                    "warm_first_call_s": statistics.median(w["first_call_s"] for w in warm),
                    "import_s": statistics.median(w["import_s"] for w in warm),
                    "warm_first_call_s_without_scipy": statistics.median(
                        w["first_call_s"] for w in bare),
                    "warm_first_call_overhead_s": statistics.median(
                        w["first_call_s"] - w["second_call_s"] for w in warm),
                    "warm_first_call_overhead_cpu_s": statistics.median(
                        w["overhead_cpu_s"] for w in warm)}}  # fmt: skip
    if theirs[0] is not None:
        out["pydensecrf"] = {
            "first_call_s": statistics.median(t["first_call_s"] for t in theirs),
            "first_call_overhead_s": statistics.median(
                t["first_call_s"] - t["second_call_s"] for t in theirs
            ),
            "first_call_overhead_cpu_s": statistics.median(t["overhead_cpu_s"] for t in theirs),
            "import_s": statistics.median(t["import_s"] for t in theirs),
        }
    return out


def cuda_throughput(batch: int, repeats: int, data: Path) -> dict:
    """deeplab_crf on a batch of reference images on the GPU: images / s, ms / image."""
    import torch

    from deeplabv1.crf import deeplab_crf

    rgb, scores = make_case((1, 1), 21, data)
    s = torch.from_numpy(scores).cuda().expand(batch, -1, -1, -1).contiguous()
    img = torch.from_numpy(rgb).cuda().expand(batch, -1, -1, -1).contiguous()
    deeplab_crf(s, img)  # warm-up
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        deeplab_crf(s, img)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"device": torch.cuda.get_device_name(), "batch": batch, "median_s": med,
            "images_per_s": batch / med, "ms_per_image": 1000 * med / batch}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--batch", type=int, default=16, help="CUDA batch size")
    ap.add_argument("--scaling", action="store_true", help="also 2x / 4x pixels and 2 labels")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    ap.add_argument("--tiles", default="1x1", help=argparse.SUPPRESS)
    ap.add_argument("--labels", type=int, default=21, help=argparse.SUPPRESS)
    ap.add_argument("--unary", default="network", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--no-scipy", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        ty, tx = (int(v) for v in args.tiles.split("x"))
        result = {
            "speed": lambda: speed_worker((ty, tx), args.labels, args.unary, args.repeats,
                                          args.data, args.threads),
            "memory": lambda: memory_worker(args.impl, args.data),
            "startup": lambda: startup_worker(args.impl, args.data, args.no_scipy),
        }[args.worker]()  # fmt: skip
        print(json.dumps(result))
        return
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(),
                          "loadavg_1min_start": os.getloadavg()[0]}}  # fmt: skip
    result["startup"] = startup(args.data)  # first: the kernels compile in it
    cases = [((1, 1), 21, kind, t) for kind in ("network", "random") for t in (1, 2)]
    if args.scaling:
        cases += [((1, 2), 21, "network", 2), ((2, 2), 21, "network", 2), ((1, 1), 2, "network", 2)]
    speed = {}
    for tiles, labels, kind, threads in cases:
        key = f"{tiles[0] * tiles[1]}x_{labels}labels_{kind}_{threads}threads"
        speed[key] = _subprocess(["--worker", "speed", "--tiles", f"{tiles[0]}x{tiles[1]}",
                                  "--labels", str(labels), "--unary", kind, "--threads",
                                  str(threads), "--repeats", str(args.repeats),
                                  "--data", str(args.data)])  # fmt: skip
    result["speed"] = speed
    result["memory"] = {impl: _subprocess(["--worker", "memory", "--impl", impl,
                                           "--data", str(args.data)])
                        for impl in ("ours", "pydensecrf")}  # fmt: skip
    ref = {t: [v for k, v in speed.items() if k.startswith("1x_21labels") and
               k.endswith(f"_{t}threads")] for t in (1, 2)}  # fmt: skip
    measured = {
        "speedup_2_threads": min((v.get("speedup", 0.0) for v in ref[2]), default=0.0),
        "speedup_1_thread": min((v.get("speedup", 0.0) for v in ref[1]), default=0.0),
        **result["startup"]["ours"],
    }
    memory = result["memory"]
    if memory.get("pydensecrf"):  # peak RSS at 500x375 as a multiple of pydensecrf2's
        measured["peak_rss_vs_pydensecrf"] = (memory["ours"]["peak_rss_mib"]
                                              / memory["pydensecrf"]["peak_rss_mib"])  # fmt: skip
    result["targets"] = {k: {"target": TARGETS[k], "measured": round(measured[k], 3),
                             "met": measured[k] >= TARGETS[k] if k.startswith("speedup")
                             else measured[k] <= TARGETS[k]}
                         for k in TARGETS if k in measured}  # fmt: skip
    if args.device == "cuda":
        result["cuda"] = cuda_throughput(args.batch, args.repeats, args.data)
    result["machine"]["loadavg_1min_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
