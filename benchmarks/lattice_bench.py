"""Permutohedral lattice build and apply times on the DeepLab reference case; prints JSON.

Builds are cold (the lattice cache is cleared before each). Apply runs the numba kernels on
the CPU when numba is installed (DEEPLABV1_CRF_NUMBA=0: the torch path).
Reference image: the 500x375 VOC sample 2007_000346 (the sample images folder), tiled to 2x and 4x
the pixels. Kernels as DeepLab-LargeFOV: Gaussian d=2 (positions / 3) and bilateral d=5
(positions / 121, RGB / 5). Times are medians (and minima) of --repeats runs in ms.

    .venv/bin/python benchmarks/lattice_bench.py [--repeats 15] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import warnings
from pathlib import Path

import numpy as np
import torch

IMAGE = Path(__file__).resolve().parents[2] / "shared/data/voc_samples/2007_000346.png"


def _features(img: np.ndarray, sxy: float, srgb: float | None) -> torch.Tensor:
    h, w = img.shape[:2]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([xx, yy], -1).reshape(1, -1, 2).float() / sxy
    if srgb is None:
        return pos
    return torch.cat([pos, torch.from_numpy(img.reshape(1, -1, 3).astype(np.float32)) / srgb], 2)


def _time(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times)), 1e3 * float(np.min(times))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--image", type=Path, default=IMAGE)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    if args.threads:
        torch.set_num_threads(args.threads)
    from PIL import Image

    from deeplabv1.crf.engine import jit
    from deeplabv1.crf.torch.lattice import PermutohedralLattice, clear_cache

    rss_after_import = _rss_mib()
    base = np.asarray(Image.open(args.image).convert("RGB"))
    results = []
    for factor, img in ((1, base), (2, np.concatenate([base, base], 1)),
                        (4, np.tile(base, (2, 2, 1)))):  # fmt: skip
        for name, sxy, srgb in (("gaussian", 3.0, None), ("bilateral", 121.0, 5.0)):
            feats = _features(img, sxy, srgb)
            # The lattice cache would answer every repeat: clear it (a cold build each time).
            build_med, build_min = _time(
                lambda f=feats: (clear_cache(), PermutohedralLattice(f)), args.repeats
            )
            lat = PermutohedralLattice(feats)
            row = {
                "kernel": name, "d": feats.shape[2], "pixels_factor": factor,
                "height": img.shape[0], "width": img.shape[1], "num_points": feats.shape[1],
                "lattice_points": lat.num_lattice,
                "build_ms_median": round(build_med, 2), "build_ms_min": round(build_min, 2),
            }  # fmt: skip
            for c in (2, 21):
                values = torch.rand(1, feats.shape[1], c)
                med, mn = _time(lambda v=values, lt=lat: lt.apply(v), args.repeats)
                row[f"apply_C{c}_ms_median"] = round(med, 2)
                row[f"apply_C{c}_ms_min"] = round(mn, 2)
            results.append(row)
    print(
        json.dumps(
            {
                "image": str(args.image.name),
                "threads": torch.get_num_threads(),
                "numba_kernels": jit.available(),
                "torch": torch.__version__,
                "repeats": args.repeats,
                "peak_rss_mib": round(_rss_mib(), 1),
                "rss_after_imports_mib": round(rss_after_import, 1),
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
