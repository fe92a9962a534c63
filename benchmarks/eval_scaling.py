"""Scaling of ``deeplabv1 eval --crf`` over processes: images per second with 1, 2, ... ranks.

    .venv/bin/python benchmarks/eval_scaling.py                        # CPU: 1 and 2 processes
    .venv/bin/python benchmarks/eval_scaling.py --device cuda --procs 1,2,4,8   # N GPUs

Synthetic VOC-format data (``deeplabv1.data.synth``) and a randomly initialised network (the
CRF's cost does not depend on the weights) are written to a temporary folder; then every
process count runs the real command under ``python -m torch.distributed.run --standalone``
(network + CRF on every image, the confusion matrices all-reduced). On the CPU each of the N
processes gets cores / N torch and CRF threads (``OMP_NUM_THREADS``); on CUDA each rank
drives ``cuda:LOCAL_RANK`` and runs the CRF there, batched. ``images_per_s`` is the number of
images over the evaluation's own wall time (rank 0, from the first image to the summed result:
launcher start-up and imports excluded; ``command_s`` includes them). The process counts run
alternately ``--repeats`` times (A/B/A/B: load from other work hits both); the median counts.
Every run's results must equal the first's (``identical_results``). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_inputs(root: Path, args) -> tuple[Path, Path]:
    """Synthetic data and a random-weight checkpoint under ``root``."""
    import torch

    from deeplabv1.checkpoint import save_checkpoint
    from deeplabv1.data.synth import make_synthetic_voc
    from deeplabv1.models import build_model

    data = make_synthetic_voc(root / "voc", args.num_images, size=tuple(args.size),
                              num_classes=args.num_classes, seed=0)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=args.num_classes, width=args.width)
    weights = root / "model.pt"
    save_checkpoint(weights, model.state_dict(), arch=model.arch, num_classes=args.num_classes,
                    width=model.width, model_kwargs=model.model_kwargs)  # fmt: skip
    return data, weights


def run_eval(procs: int, data: Path, weights: Path, out: Path, args, num_images=None) -> dict:
    """One ``torchrun ... -m deeplabv1 eval --crf`` run; its results.json plus timings."""
    threads = args.threads or max(1, (os.cpu_count() or 1) // procs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", str(procs), "-m", "deeplabv1", "eval",
           "--weights", str(weights), "--data", str(data), "--split", "trainval",
           "--test-size", str(args.test_size), "--crf", "--device", args.device,
           "--progress", "false", "-o", str(out)]  # fmt: skip
    if num_images is not None:
        cmd += ["--num-images", str(num_images)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    command_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{procs} process(es) failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    seconds = res["timing"]["total_seconds"]
    return {"procs": procs, "threads_per_proc": threads, "eval_s": seconds,
            "command_s": round(command_s, 2), "images_per_s": res["num_images"] / seconds,
            "methods": res["methods"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", default="1,2", help="process counts, comma-separated")
    ap.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU a rank)")
    ap.add_argument("--num-images", type=int, default=16)
    ap.add_argument("--size", type=int, nargs=2, default=[250, 188], metavar=("W", "H"))
    ap.add_argument("--test-size", type=int, default=257, help="padded input size (8k+1)")
    ap.add_argument("--arch", default="deeplab-largefov")
    ap.add_argument("--width", type=float, default=0.125, help="network channel multiplier")
    ap.add_argument("--num-classes", type=int, default=21)
    ap.add_argument("--threads", type=int, default=0, help="threads a process (0: cores / N)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a run may take")
    ap.add_argument("--no-warmup", action="store_true", help="skip the 1-image warm-up run")
    args = ap.parse_args()
    procs = [int(p) for p in args.procs.split(",")]
    load_before = os.getloadavg()
    runs: dict[int, list[dict]] = {p: [] for p in procs}
    with tempfile.TemporaryDirectory(prefix="eval_scaling_") as tmp:
        root = Path(tmp)
        data, weights = make_inputs(root, args)
        if not args.no_warmup:
            run_eval(1, data, weights, root / "warmup", args, num_images=1)  # JIT caches, files
        for r in range(args.repeats):
            for p in procs:
                runs[p].append(run_eval(p, data, weights, root / f"p{p}_{r}", args))
    reference = runs[procs[0]][0]["methods"]
    identical = all(run["methods"] == reference for rs in runs.values() for run in rs)
    table = []
    for p in procs:
        ips = [run["images_per_s"] for run in runs[p]]
        table.append({"procs": p, "threads_per_proc": runs[p][0]["threads_per_proc"],
                      "images_per_s": statistics.median(ips), "images_per_s_runs": ips,
                      "command_s_runs": [run["command_s"] for run in runs[p]]})  # fmt: skip
    base = table[0]["images_per_s"]
    for row in table:
        row["speedup"] = row["images_per_s"] / base
    print(json.dumps({
        "benchmark": "eval_scaling", "command": "torchrun --standalone --nproc-per-node N "
        "-m deeplabv1 eval --crf", "device": args.device, "num_images": args.num_images,
        "image_size": args.size, "test_size": args.test_size, "arch": args.arch,
        "width": args.width, "num_classes": args.num_classes, "repeats": args.repeats,
        "runs": table, "identical_results": identical,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_1min_before": load_before[0],
                    "loadavg_1min_after": os.getloadavg()[0], **gpu_info(args.device)},
    }, indent=2))  # fmt: skip
    if not identical:
        sys.exit("eval_scaling: results differ between process counts")


def gpu_info(device: str) -> dict:
    if not device.startswith("cuda"):
        return {}
    import torch

    return {"gpus": torch.cuda.device_count(), "gpu": torch.cuda.get_device_name(0)}


if __name__ == "__main__":
    main()
