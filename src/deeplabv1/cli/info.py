"""``deeplabv1 info``: parameter count, score-map size and receptive fields of a variant.

    deeplabv1 info --arch deeplab-largefov --input-size 513 --json

prints one JSON object: arch, params (int), output_size, receptive_field (true theoretical),
paper_receptive_field (the paper's nominal figure) and more. Everything is computed from the
built network (on PyTorch's meta device: no memory is allocated for the weights).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

ARCHS = Literal[
    "deeplab", "deeplab-7x7", "deeplab-4x4", "deeplab-largefov", "deeplab-msc",
    "deeplab-msc-largefov",
]  # fmt: skip


@dataclasses.dataclass
class InfoConfig:
    """Settings of ``deeplabv1 info`` (and the model part of ``deeplabv1 rf``)."""

    arch: ARCHS = dataclasses.field(
        default="deeplab-largefov", metadata={"help": "network variant"}
    )
    input_size: int = dataclasses.field(default=513, metadata={
        "help": "input side N (N x N)",
        "check": lambda n: None if n >= 1 else f"must be >= 1, got {n}"})
    num_classes: int = dataclasses.field(default=21, metadata={"help": "output classes"})
    width: float = dataclasses.field(default=1.0, metadata={"help": "channel multiplier"})
    pool4_pad: int | None = dataclasses.field(
        default=None,
        metadata={"help": "2x2-pool trunk only: 0 = train prototxt, 1 = test (default: 0)"},
    )
    trunk: str | None = dataclasses.field(
        default=None, metadata={"help": "7x7 / 4x4 only: '3x3' (default) or '2x2' pool trunk"}
    )
    pool5a: bool | None = dataclasses.field(
        default=None, metadata={"help": "LargeFOV variants: keep the 3x3 avg pool5a (default: yes)"}
    )


def model_kwargs(cfg) -> dict:
    """The builder settings that were given explicitly (pool4_pad, trunk, pool5a)."""
    names = ("pool4_pad", "trunk", "pool5a")
    return {k: getattr(cfg, k) for k in names if getattr(cfg, k) is not None}


def describe(cfg: InfoConfig) -> dict:
    """The info dict for one variant (see the module docstring)."""
    import torch

    from deeplabv1.config import check_types
    from deeplabv1.models import build_model
    from deeplabv1.models.inference import OUTPUT_STRIDE
    from deeplabv1.models.receptive_field import (
        output_size,
        paper_receptive_field,
        receptive_field,
    )

    check_types(cfg, "info")  # as resolve_config does, for a config built in Python
    with torch.device("meta"):
        model = build_model(
            cfg.arch, num_classes=cfg.num_classes, width=cfg.width, **model_kwargs(cfg)
        )
    params = sum(p.numel() for p in model.parameters())
    branch_params = sum(
        getattr(model, n).weight.numel() + getattr(model, n).bias.numel()
        for n in model.msc_layer_names
        if hasattr(getattr(model, n), "weight")
    )
    out = output_size(model, cfg.input_size)
    return {
        "arch": cfg.arch,
        "params": int(params),
        "params_millions": round(params / 1e6, 1),
        "msc_branch_params": int(branch_params),
        "num_classes": cfg.num_classes,
        "width": cfg.width,
        "model_kwargs": model.model_kwargs,
        "input_size": cfg.input_size,
        "output_size": int(out),
        "output_stride": OUTPUT_STRIDE,
        "zoomed_size": (out - 1) * OUTPUT_STRIDE + 1,
        "receptive_field": receptive_field(model),
        "paper_receptive_field": paper_receptive_field(model),
        "classifier_names": list(model.classifier_names),
        "msc_branch_names": list(model.msc_branch_names),
    }


def run(args) -> int:
    from deeplabv1.config import resolve_config

    cfg = resolve_config(InfoConfig, args)
    info = describe(cfg)
    if args.json:
        print(json.dumps(info))
        return 0
    for key, value in info.items():
        print(f"{key:22s} {value}")
    return 0


def add_parser(subparsers) -> None:
    from deeplabv1.config import add_config_args

    p = subparsers.add_parser(
        "info", help="parameters, score-map size and receptive field of a variant"
    )
    add_config_args(p, InfoConfig)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
