"""``deeplabv1 convert``: ImageNet VGG16 or the authors' Caffe models -> a deeplabv1 checkpoint.

    deeplabv1 convert --from torchvision-vgg16 vgg16-397923af.pth --arch deeplab-largefov -o init.pt
    deeplabv1 convert --from caffe-vgg16 VGG_ILSVRC_16_layers.caffemodel --arch deeplab -o init.pt
    deeplabv1 convert --from caffe train_iter_6000.caffemodel --arch deeplab-largefov -o model.pt

The input convention is folded into conv1_1 (every network takes Caffe input: BGR, 0-255, minus
the mean); fc6/fc7 are reshaped and decimated; LargeFOV keeps a seeded random subset of 1,024
fc6 filters (``--seed``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from deeplabv1.cli.info import ARCHS
from deeplabv1.config import add_config_args, config_to_dict, resolve_config, save_config
from deeplabv1.errors import DeepLabError

SOURCES = ("torchvision-vgg16", "caffe-vgg16", "caffe")


def _at_least(minimum: int):
    return lambda value: None if value >= minimum else f"must be >= {minimum}, got {value}"


def _positive(value: float) -> str | None:
    return None if 0 < value < float("inf") else f"must be a finite number > 0, got {value}"


@dataclasses.dataclass
class ConvertConfig:
    """Settings of ``deeplabv1 convert`` (flags, or a YAML file given with --config)."""

    source_format: Literal["torchvision-vgg16", "caffe-vgg16", "caffe"] = "torchvision-vgg16"
    source: str = ""
    output: str = ""
    arch: ARCHS = dataclasses.field(
        default="deeplab-largefov", metadata={"help": "network variant to build"})
    num_classes: int | None = dataclasses.field(
        default=None, metadata={"help": "classes of fc8 (default: the Caffe model's fc8, else 21)",
                                "check": _at_least(1)})  # fmt: skip
    width: float | None = dataclasses.field(
        default=None, metadata={"help": "channel multiplier (default: read from conv1_1)",
                                "check": _positive})  # fmt: skip
    seed: int = dataclasses.field(
        default=0, metadata={"help": "seed of the fc6/fc7 subset, fc8 and MSc init (>= 0)",
                             "check": _at_least(0)})  # fmt: skip
    strict: bool = dataclasses.field(
        default=True, metadata={"help": "caffe: fail on missing/extra/mismatched layers"})
    rename: list[str] = dataclasses.field(
        default_factory=list, metadata={"help": "caffe: CAFFE_NAME=OUR_NAME layer renames"})
    model_kwargs: list[str] = dataclasses.field(
        default_factory=list, metadata={"help": "builder settings KEY=VALUE, e.g. pool4_pad=1"})
    overwrite: bool = dataclasses.field(
        default=False, metadata={"help": "replace an existing output deeplabv1 did not write"})


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="import ImageNet VGG16 or Caffe weights",
        description="Convert torchvision VGG16 or Caffe .caffemodel weights into a checkpoint.",
    )  # fmt: skip
    p.add_argument("--from", dest="source_format", choices=SOURCES, required=True,
                   help="format of SOURCE")
    p.add_argument("source", help="input weights (.pth state dict or .caffemodel)")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (atomically)")
    add_config_args(p, ConvertConfig, skip=("source_format", "source", "output"))
    p.set_defaults(func=run)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise DeepLabError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _model_kwargs(items: list[str]) -> dict:
    import yaml

    return {k: yaml.safe_load(v) for k, v in _pairs(items, "--model-kwargs").items()}


def run(args) -> int:
    """Entry point of ``deeplabv1 convert``."""
    from deeplabv1.io import output_rules

    cfg = resolve_config(ConvertConfig, args)
    with output_rules([cfg.source], overwrite=cfg.overwrite, command="convert"):
        result = convert(cfg)
    print(result["summary"])
    return 0


def convert(cfg: ConvertConfig) -> dict:
    """Run one conversion; writes ``cfg.output`` (+ ``<stem>.config.yaml``); returns a summary.

    Weights holding NaN or infinite values are refused, naming the file.
    """
    import torch

    from deeplabv1.checkpoint import check_finite, model_from_checkpoint, save_checkpoint
    from deeplabv1.config import check_types
    from deeplabv1.convert import caffe, caffe_proto, torchvision_vgg
    from deeplabv1.io import check_outputs
    from deeplabv1.models import build_model

    check_types(cfg, "convert")  # a config built in Python; resolve_config checked the CLI's
    src, out = Path(cfg.source), Path(cfg.output)
    check_outputs([out, out.with_name(out.stem + ".config.yaml")])  # before reading anything
    kwargs = _model_kwargs(cfg.model_kwargs)
    found: dict = {}
    if cfg.source_format == "torchvision-vgg16":
        state = load_state_dict(src)
        conv1 = state.get("features.0.weight")
        if conv1 is not None:
            found["width"] = conv1.shape[0] / 64.0
    else:
        _, layers = caffe_proto.read_caffemodel(src)
        weighted = caffe.weighted_layers(layers, str(src))
        ours = set()
        if cfg.source_format == "caffe":  # our layer names, for the fc8_<dataset> rule
            probe = build_model(cfg.arch, num_classes=1, width=1 / 64, **kwargs)
            ours = {k.rpartition(".")[0] for k in probe.state_dict()}
        named = caffe.resolve_names(weighted, ours, _pairs(cfg.rename, "--rename"), str(src))
        found = caffe.infer_shapes(named, str(src))
        if cfg.source_format == "caffe-vgg16":
            found.pop("num_classes", None)  # ImageNet's 1000 classes are not ours
    width = cfg.width if cfg.width is not None else found.get("width", 1.0)
    num_classes = cfg.num_classes if cfg.num_classes is not None else found.get("num_classes", 21)
    cfg = dataclasses.replace(cfg, width=width, num_classes=num_classes)  # saved as resolved
    torch.manual_seed(cfg.seed)  # the model's own init (MSc branches) is reproducible too
    model = build_model(cfg.arch, num_classes=num_classes, width=width, **kwargs)
    template = model.state_dict()
    record: dict = {"from": cfg.source_format, "file": str(src)}
    report: dict = {}
    if cfg.source_format == "torchvision-vgg16":
        weights, choices = torchvision_vgg.torchvision_to_deeplab(
            state, template, seed=cfg.seed, source=str(src))
        record.update(choices)
    elif cfg.source_format == "caffe-vgg16":
        vgg = caffe.vgg16_from_caffe(named, str(src))
        weights, choices = torchvision_vgg.deeplab_init_from_vgg16(
            vgg, template, seed=cfg.seed, source=str(src))
        record.update(choices)
    else:
        weights, report = caffe.caffe_to_deeplab(named, template, source=str(src),
                                                 strict=cfg.strict)
        record.update({k: v for k, v in report.items() if k != "loaded"})
    check_finite(weights, str(src))
    config = config_to_dict(cfg)
    save_checkpoint(out, weights, arch=cfg.arch, num_classes=num_classes, width=width,
                    model_kwargs=model.model_kwargs, config=config, source=record)
    save_config(cfg, out.with_name(out.stem + ".config.yaml"))
    model_from_checkpoint(out)  # the written file loads strictly into the architecture
    params = sum(v.numel() for v in weights.values())
    lines = [f"wrote {out}: {cfg.arch}, {num_classes} classes, width {width:g}, "
             f"{params:,} parameters (from {cfg.source_format} {src})"]
    for kind in ("missing", "extra", "mismatched"):
        if report.get(kind):
            lines.append(f"  {kind} (kept the model's init / skipped): {', '.join(report[kind])}")
    return {"summary": "\n".join(lines), "source": record, "path": out}


def load_state_dict(path: Path) -> dict:
    """A .pth state dict read with ``weights_only=True`` (no pickle code runs)."""
    import torch

    from deeplabv1.checkpoint import load_weights_only

    if not path.is_file():
        raise DeepLabError(f"{path}: file not found")
    obj = load_weights_only(path, "torch .pth file")
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DeepLabError(f"{path}: expected a state dict of tensors")
    return obj
