"""Forward + backward time and memory of the CRF layer (deeplabv1.crf.torch.layer.CRFLayer).

    .venv/bin/python benchmarks/crf_layer_bench.py                       # CPU, 321x321 and 500x375
    .venv/bin/python benchmarks/crf_layer_bench.py --device cuda --repeats 10

Per configuration (image size x memory checkpointing on/off), in a fresh subprocess so that
the peak RSS is that configuration's: one warm-up, then the median of ``--repeats`` timed
forward+backward passes of one image (21 labels, 5 mean-field updates, DeepLab-LargeFOV
parameters, lattice filtering, learned weights and compatibility; ``--learn-std`` adds the
kernel-std gradients). Memory: bytes autograd saves for backward (saved-tensor hooks), peak
process RSS (CPU) or torch.cuda.max_memory_allocated (CUDA). On a shared CPU the wall time
depends on the load: ``cpu_seconds_per_image`` (process CPU time over all threads) is the
steadier figure. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def scene(height: int, width: int, num_classes: int, device):
    """A structured test image (coloured blocks + noise) and smooth random scores."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (1, 3, 6, 8), generator=g).float()
    img = F.interpolate(blocks, size=(height, width), mode="nearest")[0].permute(1, 2, 0)
    img = (img + 20 * torch.randn(img.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    coarse = 3 * torch.randn(1, num_classes, height // 8 + 1, width // 8 + 1, generator=g)
    scores = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)
    return scores.to(device), img[None].to(device)


def run_one(args) -> dict:
    """Time and memory of one configuration in this process."""
    import torch

    from deeplabv1.crf.torch.layer import CRFLayer

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    width, height = (int(v) for v in args.size.split("x"))
    scores, img = scene(height, width, args.labels, device)
    layer = CRFLayer(args.labels, "deeplab-largefov", iters=args.iters, learn_std=args.learn_std,
                     checkpoint=args.checkpoint).to(device)  # fmt: skip
    saved: dict[int, int] = {}

    def pack(t):
        saved[id(t)] = t.numel() * t.element_size()
        return t

    def step(count_saved: bool = False):
        s = scores.clone().requires_grad_()
        if count_saved:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = layer(s, img)
        else:
            out = layer(s, img)
        (out.log_softmax(1)[:, 0].mean()).backward()
        layer.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step(count_saved=True)  # warm-up, counts the saved tensors
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for _ in range(args.repeats):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    out = {
        "size": args.size, "labels": args.labels, "iters": args.iters,
        "checkpoint": args.checkpoint, "learn_std": args.learn_std, "device": str(device),
        "seconds_per_image": round(statistics.median(times), 4),
        "seconds_all": [round(t, 4) for t in times],
        "cpu_seconds_per_image": round(statistics.median(cpu_times), 4),  # all threads
        "saved_for_backward_mib": round(sum(saved.values()) / 2**20, 2),
    }  # fmt: skip
    if device.type == "cuda":
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["gpu"] = torch.cuda.get_device_name(device)
    else:
        out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        out["threads"] = torch.get_num_threads()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="321x321,500x375", help="WxH list")
    p.add_argument("--labels", type=int, default=21)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--learn-std", action="store_true")
    p.add_argument("--size", help=argparse.SUPPRESS)  # one configuration (subprocess)
    p.add_argument("--checkpoint", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.size:
        print(json.dumps(run_one(args)))
        return 0
    results = []
    for size in args.sizes.split(","):
        for ckpt in (False, True):
            cmd = [sys.executable, __file__, "--size", size, "--device", args.device,
                   "--labels", str(args.labels), "--iters", str(args.iters),
                   "--repeats", str(args.repeats), "--threads", str(args.threads)]  # fmt: skip
            cmd += ["--checkpoint"] if ckpt else []
            cmd += ["--learn-std"] if args.learn_std else []
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(json.dumps({"benchmark": "crf_layer_forward_backward", "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
