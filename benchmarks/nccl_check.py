"""A check of the multi-process path on this machine: the collectives and one DDP training step.

    python -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/nccl_check.py \\
        --device cuda                       # NCCL, one GPU a rank (gloo with --device cpu)

Every rank joins the group the way the commands do (``deeplabv1.distributed.context``), then:
exact int64 sums beyond float precision (``all_reduce_arrays``), gather and broadcast of
Python objects, and one DDP step of a tiny DeepLab-LargeFOV (no dropout) on rank-dependent
inputs, whose averaged gradients must equal the mean of the ranks' own gradients without DDP.
Rank 0 prints one JSON object; the exit status is non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch


def ddp_step(info, size: int) -> float:
    """Largest relative difference between DDP's averaged gradients and the mean of the
    ranks' own gradients (the DDP model is released on return, before the group is left)."""
    from deeplabv1.distributed.context import all_reduce_sum
    from deeplabv1.models import build_model
    from deeplabv1.train.distributed import wrap_model

    torch.manual_seed(0)
    model = build_model("deeplab-largefov", num_classes=4, width=1 / 16).to(info.device).eval()
    local = build_model("deeplab-largefov", num_classes=4, width=1 / 16).to(info.device).eval()
    local.load_state_dict(model.state_dict())
    ddp = wrap_model(model, info)
    gen = torch.Generator().manual_seed(100 + info.rank)
    x = torch.randn(1, 3, size, size, generator=gen).to(info.device)
    ddp(x).square().mean().backward()
    local(x).square().mean().backward()
    worst = 0.0
    for p, q in zip(model.parameters(), local.parameters()):
        mean = all_reduce_sum(q.grad.detach().clone(), info) / info.world_size
        worst = max(worst, float((p.grad - mean).abs().max() / (mean.abs().max() + 1e-12)))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cuda (NCCL) or cpu (gloo)")
    ap.add_argument("--size", type=int, default=65, help="input size of the DDP step")
    args = ap.parse_args()
    from deeplabv1.distributed.context import (
        all_reduce_arrays,
        barrier,
        broadcast_object,
        distributed_session,
        gather_objects,
    )

    t0 = time.perf_counter()
    with distributed_session(args.device) as info:
        world, rank, device = info.world_size, info.rank, info.device
        checks = {}
        big = np.array([2**60 + rank, -rank], dtype=np.int64)
        sums = all_reduce_arrays({"big": big, "f": np.full(2, 0.25)}, info)
        tot = sum(range(world))
        checks["all_reduce_exact"] = sums["big"].tolist() == [world * 2**60 + tot, -tot] and (
            sums["f"].tolist() == [0.25 * world] * 2)  # fmt: skip
        names = gather_objects(str(device), info)
        checks["gather_broadcast"] = (len(names) == world
                                      and broadcast_object(rank, info) == 0)  # fmt: skip
        worst = ddp_step(info, args.size)
        checks["ddp_grads_match"] = worst < 1e-4
        barrier(info)  # nobody leaves the group while another still uses it
        backend = torch.distributed.get_backend() if info.distributed else None
    if rank == 0:
        print(json.dumps({"benchmark": "nccl_check", "backend": backend, "world_size": world,
                          "devices": names, "checks": checks, "ddp_max_rel_grad_diff": worst,
                          "seconds": round(time.perf_counter() - t0, 2)}, indent=2))  # fmt: skip
    if not all(checks.values()):
        sys.exit(f"nccl_check: failed {[k for k, v in checks.items() if not v]}")


if __name__ == "__main__":
    main()
