"""Inference speed of a DeepLab V1 network at 513x513 (the paper's test procedure).

    python benchmarks/infer_bench.py                       # CPU, LargeFOV full width, batch 1
    python benchmarks/infer_bench.py --device cuda --bf16 --channels-last --batch 16

One call = ``predict_scores`` (network on the 513x513 padded input, bilinear align-corners zoom
x8 to 513x513) under ``torch.inference_mode``. Prints one JSON object: images_per_s, the forward
FLOPs per image (PyTorch's FlopCounterMode), the measured torch.mm FLOP/s of the same dtype and
the achieved fraction. The paper: 8 frames/s for the network on a 2014 GPU.
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_utils import (
    add_common_args,
    count_flops,
    machine_info,
    matmul_flops_per_s,
    setup,
    time_calls,
)

from deeplabv1.models import build_model
from deeplabv1.models.inference import predict_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--size", type=int, default=513, help="test size (padded square)")
    args = parser.parse_args()
    device, model, fmt, autocast = setup(args, build_model, train=False)
    net = torch.compile(model) if args.compile else model
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).mul_(60)
    x = x.contiguous(memory_format=fmt)

    def call() -> torch.Tensor:
        with torch.inference_mode(), autocast:
            return predict_scores(net, x, test_size=args.size)

    flops_per_image = count_flops(call) / args.batch
    seconds = time_calls(call, device, warmup=args.warmup, iters=args.iters,
                         min_time=args.min_time)
    images_per_s = args.batch / seconds
    mm = matmul_flops_per_s(device, torch.bfloat16 if args.bf16 else torch.float32,
                            n=args.matmul_size or None)
    achieved = flops_per_image * images_per_s
    print(json.dumps({
        "benchmark": "inference", "arch": args.arch, "width": args.width, "size": args.size,
        "batch": args.batch, "bf16": args.bf16, "channels_last": args.channels_last,
        "compile": args.compile, "call_s": seconds, "images_per_s": images_per_s,
        "gflop_per_image": flops_per_image / 1e9, "achieved_tflop_s": achieved / 1e12,
        "matmul_tflop_s": mm / 1e12, "fraction_of_matmul": achieved / mm,
        "paper_images_per_s": 8.0, **machine_info(device),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
