"""The ``deeplabv1`` command: one sub-command per module of this package.

Each module here defines ``add_parser(subparsers)``, which registers its sub-command and sets
``func`` to a function ``(args) -> int`` (the exit status). Heavy imports stay inside those
functions so that ``deeplabv1 --help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from deeplabv1 import __version__
from deeplabv1.errors import DeepLabError

# sub-command module, in the order `deeplabv1 --help` lists them
COMMAND_MODULES = (
    "info",
    "rf",
    "convert",
    "crf",
    "data",
    "train",
    "eval",
    "crf_search",
    "predict",
    "export",
    "plot",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="deeplabv1",
        description="DeepLab V1: atrous VGG16 + fully connected CRF (Chen et al., ICLR 2015).",
    )
    parser.add_argument("--version", action="version", version=f"deeplabv1 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"deeplabv1.cli.{name}").add_parser(sub)
    return parser


# optional dependency (top-level module) -> the extra that installs it
EXTRAS = {"torch": "torch", "scipy": "torch", "matplotlib": "torch", "onnx": "onnx",
          "onnxruntime": "onnx", "tensorboard": "tensorboard"}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:  # an optional dependency (the CRF needs none of them)
        extra = EXTRAS.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        print(f"deeplabv1 {args.command}: needs {exc.name}, which is not installed: "
              f'pip install "deeplabv1[{extra}]"', file=sys.stderr)  # fmt: skip
        return 2
    except DeepLabError as exc:
        print(f"deeplabv1 {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"deeplabv1 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
