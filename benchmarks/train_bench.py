"""Training speed of a DeepLab V1 network: images/s at 321x321 and the achieved FLOP fraction.

    python benchmarks/train_bench.py                       # CPU, LargeFOV full width, batch 2
    python benchmarks/train_bench.py --device cuda --bf16 --channels-last --batch 20

One step = forward, the DeepLab loss, backward and the Caffe-SGD update, on random inputs (the
speed does not depend on the pixel values). Prints one JSON object: images_per_s, the FLOPs of
one training image (forward + backward, counted by PyTorch's FlopCounterMode), the measured
torch.mm FLOP/s of the same dtype, the achieved fraction and the time the paper's 6,000 x 20
recipe would take at this speed. The paper: 4.84 images/s for LargeFOV on a 2014 GPU.
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
from deeplabv1.train.config import TrainConfig
from deeplabv1.train.loss import count_valid, cross_entropy_sum
from deeplabv1.train.optim import build_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--crop", type=int, default=321)
    args = parser.parse_args()
    device, model, fmt, autocast = setup(args, build_model, train=True)
    optimizer = build_optimizer(model, TrainConfig(data_root="-"))
    net = torch.compile(model) if args.compile else model
    x = torch.randn(args.batch, 3, args.crop, args.crop, device=device).mul_(60)
    x = x.contiguous(memory_format=fmt)
    with torch.no_grad():
        grid = model(x[:1]).shape[-2:]
    y = torch.randint(0, model.num_classes, (args.batch, *grid), device=device)

    def step() -> None:
        with autocast:
            scores = net(x)
        loss = cross_entropy_sum(scores, y) / count_valid(y).float()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    flops_per_image = count_flops(step) / args.batch
    seconds = time_calls(step, device, warmup=args.warmup, iters=args.iters,
                         min_time=args.min_time)
    images_per_s = args.batch / seconds
    mm = matmul_flops_per_s(device, torch.bfloat16 if args.bf16 else torch.float32,
                            n=args.matmul_size or None)
    achieved = flops_per_image * images_per_s
    print(json.dumps({
        "benchmark": "train", "arch": args.arch, "width": args.width, "crop": args.crop,
        "batch": args.batch, "bf16": args.bf16, "channels_last": args.channels_last,
        "compile": args.compile, "score_grid": list(grid), "step_s": seconds,
        "images_per_s": images_per_s, "train_gflop_per_image": flops_per_image / 1e9,
        "achieved_tflop_s": achieved / 1e12, "matmul_tflop_s": mm / 1e12,
        "fraction_of_matmul": achieved / mm,
        "recipe_6000x20_minutes": 6000 * 20 / images_per_s / 60,
        "paper_images_per_s": 4.84, **machine_info(device),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
