"""Dense-CRF speed and memory: ours (deeplabv1.crf) against pydensecrf2 in the same run.

Reference case (issue 3): a real VOC image (2007_000346, 500x375 RGB), 21 labels, 10 mean-field
iterations, DeepLab-LargeFOV parameters (Gaussian sxy 3 compat 3; bilateral sxy 121 srgb 5
compat 4), "after" normalisation, scores = noisy one-hot ground truth. Both run through the
same pydensecrf API (ours via the drop-in), each in its own subprocess so that peak RSS
(resource.getrusage) is its own; setup (constructor + unary + both pairwise terms, i.e. the
lattices) and inference are timed separately, median of --repeats after one warm-up
(first_call_s). A separate process of each runs the CRF once on a tiny 16x12 image: its RSS
(rss_after_runtime_mib; ours: numpy + numba with its runtime and cached kernels loaded) and
time (runtime_init_s) are the runtime's baseline; peak_rss_over_runtime_mib = peak_rss_mib -
that baseline is the memory of the CRF itself. Each repeat uses a new image (one colour bit
toggled), so ours rebuilds the bilateral lattice every time while the position-only lattice
stays cached (the realistic batch case); total_s_cold is ours with the lattice cache cleared
before every repeat. Also: 1x / 2x / 4x pixels (the image tiled), 2 versus 21 labels, and with
--device cuda the batch throughput of ``deeplab_crf`` (images / s). Prints one JSON object.

    .venv/bin/python benchmarks/crf_bench.py [--repeats 5] [--device cuda] [--no-scaling]
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
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc_samples"
SAMPLE = "2007_000346"
LARGEFOV = dict(w1=4.0, sa=121.0, sb=5.0, w2=3.0, sg=3.0)


def make_case(tiles: tuple[int, int], num_labels: int, data: Path):
    """(rgb (H, W, 3) uint8, scores (L, H, W) float32): the 500x375 sample tiled."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(data / f"{SAMPLE}.png").convert("RGB").resize((500, 375)))
    lab = np.asarray(Image.open(data / f"{SAMPLE}_label.png").resize((500, 375), Image.NEAREST))
    lab = lab.astype(np.int64) % num_labels
    rng = np.random.default_rng(0)
    onehot = np.eye(num_labels, dtype=np.float32)[lab].transpose(2, 0, 1)
    scores = 3.0 * onehot + rng.normal(scale=1.5, size=onehot.shape).astype(np.float32)
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


def worker(impl: str, tiles, num_labels: int, repeats: int, data: Path, threads: int = 0) -> dict:
    """Time one implementation in this process; returns timings, peak RSS and labels hash."""
    import numpy as np

    if impl == "pydensecrf":
        import pydensecrf.densecrf as dcrf
    else:
        from deeplabv1.crf import densecrf as dcrf
        from deeplabv1.crf import get_num_threads, set_num_threads

        if threads > 0:
            set_num_threads(threads)
    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if tiles == (0, 0):  # the runtime baseline: the CRF once on a tiny image, nothing else
        tiny = np.random.default_rng(0)
        t0 = time.perf_counter()
        crf_once(dcrf, tiny.integers(0, 256, (12, 16, 3), dtype=np.uint8),
                 tiny.normal(size=(num_labels, 12 * 16)).astype(np.float32))  # fmt: skip
        return {"runtime_init_s": time.perf_counter() - t0,
                "rss_after_runtime_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                / 1024}  # fmt: skip
    rgb, scores = make_case(tiles, num_labels, data)
    h, w, _ = rgb.shape
    unary = np.ascontiguousarray(-scores.reshape(num_labels, -1))

    def run(k: int):
        # Repeat k toggles the lowest bit of one colour value, so that ours never reuses the
        # previous bilateral lattice (a new image in a real run); the position-only
        # Gaussian lattice is the same for every image of this size and stays cached.
        img = rgb.copy()
        img[0, 0, 0] ^= k & 1
        return crf_once(dcrf, img, unary)

    first = run(0)  # warm-up: the first call at this size
    setup, infer, q = [], [], None
    for k in range(1, repeats + 1):
        a, b, q = run(k)
        setup.append(a)
        infer.append(b)
    cold = {}
    if impl != "pydensecrf":  # ours with no lattice cached at all (the first image of a run)
        from deeplabv1.crf.engine.cache import clear_cache

        runs = []
        for k in range(repeats):
            clear_cache()
            runs.append(run(k)[:2])
        cold = {"setup_s_cold": statistics.median(r[0] for r in runs),
                "total_s_cold": statistics.median(r[0] + r[1] for r in runs)}  # fmt: skip
    total = [a + b for a, b in zip(setup, infer)]
    torch_imported = "torch" in sys.modules
    if impl != "pydensecrf":  # the drop-in's CPU engine runs on numpy + numba alone
        assert not torch_imported, "the drop-in imported torch"
    labels = q.argmax(0).astype(np.uint8)
    np.save(os.environ["CRF_BENCH_LABELS"], labels)
    return {
        "pixels": h * w,
        "size": [w, h],
        "labels": num_labels,
        "first_call_s": first[0] + first[1],
        "setup_s": statistics.median(setup),
        "inference_s": statistics.median(infer),
        "total_s": statistics.median(total),
        "total_s_all": [round(t, 4) for t in total],
        **cold,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_imports_mib": rss_imports,
        "peak_rss_over_imports_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        - rss_imports,
        "threads": 1 if impl == "pydensecrf" else get_num_threads(),
        "torch_imported": torch_imported,
    }


def warm_numba_cache() -> None:
    """Compile (or load) ours' numba kernels in a throwaway process: a first compilation in a
    fresh environment then never inflates a measured process's peak memory or first call."""
    code = (
        "import numpy as np\n"
        "from deeplabv1.crf import densecrf as dcrf, set_num_threads\n"
        "rng = np.random.default_rng(0)\n"
        "img = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)\n"
        "for t in (1, 2):  # single-threaded twins and parallel kernels\n"
        "    set_num_threads(t)\n"
        "    d = dcrf.DenseCRF2D(20, 15, 21)\n"
        "    d.setUnaryEnergy(rng.random((21, 300), dtype=np.float32))\n"
        "    d.addPairwiseGaussian(sxy=3, compat=3, normalization=dcrf.NORMALIZE_AFTER)\n"
        "    d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=img, compat=4,\n"
        "                           normalization=dcrf.NORMALIZE_AFTER)\n"
        "    d.inference(2)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def run_worker(impl, tiles, num_labels, repeats, data, tmp: Path, threads=0) -> dict | None:
    """Run ``worker`` in a fresh interpreter; None when the implementation is unavailable."""
    labels_path = tmp / f"{impl}_{tiles[0]}x{tiles[1]}_{num_labels}.npy"
    cmd = [sys.executable, __file__, "--worker", impl, "--tiles", f"{tiles[0]}x{tiles[1]}",
           "--labels", str(num_labels), "--repeats", str(repeats), "--data", str(data),
           "--threads", str(threads)]  # fmt: skip
    env = dict(os.environ, CRF_BENCH_LABELS=str(labels_path), PYTHONWARNINGS="ignore")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        if "No module named 'pydensecrf'" in out.stderr:
            return None
        raise RuntimeError(f"{impl} worker failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if tiles != (0, 0):
        result["labels_file"] = str(labels_path)
        base = run_worker(impl, (0, 0), num_labels, repeats, data, tmp, threads)
        result.update(base, peak_rss_over_runtime_mib=result["peak_rss_mib"]
                      - base["rss_after_runtime_mib"])  # fmt: skip
    return result


def compare(ours: dict, theirs: dict | None) -> dict:
    """Speed / memory ratios and label agreement of one case."""
    import numpy as np

    entry = {"ours": ours}
    if theirs is not None:
        a, b = np.load(ours["labels_file"]), np.load(theirs["labels_file"])
        entry.update(
            pydensecrf=theirs,
            speedup=theirs["total_s"] / ours["total_s"],
            time_ratio_ours_over_pydensecrf=ours["total_s"] / theirs["total_s"],
            time_ratio_cold_ours_over_pydensecrf=ours.get("total_s_cold", ours["total_s"])
            / theirs["total_s"],
            memory_ratio_ours_over_pydensecrf=ours["peak_rss_mib"] / theirs["peak_rss_mib"],
            same_labels_fraction=float((a == b).mean()),
        )
    for side in ("ours", "pydensecrf"):
        if side in entry:
            entry[side].pop("labels_file", None)
    return entry


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
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--batch", type=int, default=16, help="CUDA batch size")
    ap.add_argument("--no-scaling", action="store_true", help="only the reference case")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--threads", type=int, default=0,
                    help="threads of ours (crf.set_num_threads; 0: numba default)")  # fmt: skip
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--tiles", default="1x1", help=argparse.SUPPRESS)
    ap.add_argument("--labels", type=int, default=21, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        ty, tx = (int(v) for v in args.tiles.split("x"))
        print(
            json.dumps(
                worker(args.worker, (ty, tx), args.labels, args.repeats, args.data, args.threads)
            )
        )
        return
    import tempfile

    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(),
                          "loadavg_1min": os.getloadavg()[0]}}  # fmt: skip
    warm_numba_cache()
    cases = [((1, 1), 21)]
    if not args.no_scaling:
        cases += [((1, 2), 21), ((2, 2), 21), ((1, 1), 2)]
    with tempfile.TemporaryDirectory() as tmp:
        for tiles, labels in cases:
            ours = run_worker(
                "ours", tiles, labels, args.repeats, args.data, Path(tmp), args.threads
            )
            theirs = run_worker("pydensecrf", tiles, labels, args.repeats, args.data, Path(tmp))
            key = (
                "reference"
                if (tiles, labels) == ((1, 1), 21)
                else f"x{tiles[0] * tiles[1]}px_{labels}labels"
            )
            result[key] = compare(ours, theirs)
    if args.device == "cuda":
        result["cuda"] = cuda_throughput(args.batch, args.repeats, args.data)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
