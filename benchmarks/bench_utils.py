"""Shared pieces of train_bench.py and infer_bench.py: timing, FLOP counting, the mm roofline.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add, from the
conv and matmul shapes actually executed), so the achieved FLOP/s is comparable with a
``torch.mm`` measurement of the same dtype on the same machine.
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs executed by one call of ``fn`` (conv, matmul, ... as counted by PyTorch)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def time_calls(fn: Callable[[], object], device: torch.device, *, warmup: int, iters: int,
               min_time: float = 0.0) -> float:
    """Mean seconds per call, after ``warmup`` calls, over at least ``iters`` calls and
    ``min_time`` seconds."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    calls = 0
    while calls < iters or time.perf_counter() - start < min_time:
        fn()
        calls += 1
        if calls >= iters:
            synchronize(device)
    synchronize(device)
    return (time.perf_counter() - start) / calls


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, n: int | None = None,
                       repeats: int = 3) -> float:
    """Measured dense ``torch.mm`` throughput (FLOP/s) of an n x n product: the best of
    ``repeats`` timings (on a shared machine the best is the least disturbed one)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    iters = 5 if device.type == "cpu" else 50
    best = min(time_calls(lambda: torch.mm(a, b), device, warmup=2, iters=iters, min_time=0.5)
               for _ in range(repeats))
    return 2.0 * n**3 / best


def machine_info(device: torch.device) -> dict:
    """Where the numbers were measured."""
    info = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def add_common_args(parser) -> None:
    """Flags shared by both benchmarks."""
    parser.add_argument("--arch", default="deeplab-largefov")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=0.0, help="time at least this long (s)")
    parser.add_argument("--matmul-size", type=int, default=0,
                        help="n of the torch.mm roofline (0: 8192 on CUDA, 2048 on the CPU)")


def setup(args, build_model, train: bool):
    """Apply the common flags: threads, device (cuDNN autotuning on CUDA), seed 0; returns
    (device, model in train/eval mode and the memory format, memory format, autocast context)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    torch.manual_seed(0)
    model = build_model(args.arch, width=args.width).to(device).train(train)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16
                else contextlib.nullcontext())  # fmt: skip
    return device, model, fmt, autocast
