"""Batched dense CRF on one device: ms per image for batches of B images, labels vs the CPU engine.

    .venv/bin/python benchmarks/crf_batch_bench.py --device cuda            # 500x375, B = 1, 8, 32
    .venv/bin/python benchmarks/crf_batch_bench.py --size 50 38 --labels 4 --batches 1,2  # tiny

``deeplab_crf`` on a (B, C, H, W) batch, as ``eval --crf`` runs it on the network's device
(on CUDA: the torch permutohedral-lattice path; on the CPU: the torch-free engine). The B
images are distinct synthetic scenes (``deeplabv1.data.synth``; 21 labels, DeepLab-LargeFOV
parameters, 10 iterations) with scores = noisy one-hot labels, so no lattice is reused
between images. One warm-up call, then the median of ``--repeats`` timed calls (the GPU
synchronised). Labels of up to 4 images per batch are compared with the CPU engine run on
each image alone (``label_agreement_min``: the worst image's fraction of equal pixels); the
CPU engine's own ms per image is the baseline. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np


def make_scenes(count: int, size: tuple[int, int], labels: int):
    """``count`` distinct (rgb (H, W, 3) uint8, scores (L, H, W) float32) pairs."""
    from deeplabv1.data.synth import synth_sample

    out = []
    for k in range(count):
        rng = np.random.default_rng(k)
        rgb, lab = synth_sample(rng, size, num_classes=labels)
        lab = np.where(lab == 255, 0, lab).astype(np.int64)
        scores = 3.0 * np.eye(labels, dtype=np.float32)[lab].transpose(2, 0, 1)
        scores += rng.normal(0, 1.5, scores.shape).astype(np.float32)
        out.append((rgb, scores))
    return out


def timed(fn, device, repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--batches", default="1,8,32", help="batch sizes, comma-separated")
    ap.add_argument("--size", type=int, nargs=2, default=[500, 375], metavar=("W", "H"))
    ap.add_argument("--labels", type=int, default=21)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare", type=int, default=4, help="images a batch checked vs CPU")
    args = ap.parse_args()
    import torch

    from deeplabv1.crf import deeplab_crf, get_params

    device = torch.device(args.device)
    params = get_params("deeplab-largefov")
    batches = [int(b) for b in args.batches.split(",")]
    scenes = make_scenes(max(batches), tuple(args.size), args.labels)
    cpu_labels: dict[int, np.ndarray] = {}

    def cpu_alone(k: int) -> np.ndarray:
        if k not in cpu_labels:
            rgb, scores = scenes[k]
            cpu_labels[k] = deeplab_crf(scores, rgb, params, args.iters).argmax(0).numpy()
        return cpu_labels[k]

    rgb0, scores0 = scenes[0]
    cpu_s = timed(lambda: deeplab_crf(scores0, rgb0, params, args.iters), torch.device("cpu"),
                  args.repeats)  # fmt: skip
    rows = []
    for b in batches:
        scores = torch.from_numpy(np.stack([s for _, s in scenes[:b]])).to(device)
        images = np.stack([rgb for rgb, _ in scenes[:b]])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def call(scores=scores, images=images):
            return deeplab_crf(scores, images, params, args.iters, device=device)

        seconds = timed(call, device, args.repeats)
        got = call().argmax(1).cpu().numpy()
        agree = [float((got[k] == cpu_alone(k)).mean()) for k in range(min(b, args.compare))]
        row = {"batch": b, "ms_per_image": 1000 * seconds / b, "images_per_s": b / seconds,
               "median_call_s": seconds, "label_agreement_min": min(agree)}  # fmt: skip
        if device.type == "cuda":
            row["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        rows.append(row)
        del scores
    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps({
        "benchmark": "crf_batch", "device": str(device), "size": args.size,
        "labels": args.labels, "iters": args.iters, "batches": rows,
        "cpu_engine_ms_per_image": 1000 * cpu_s, **info,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
