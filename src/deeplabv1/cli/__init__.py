"""The ``deeplabv1`` command: one sub-command per module of this package.

Each module here defines ``add_parser(subparsers)``, which registers its sub-command and sets
``func`` to a function ``(args) -> int`` (the exit status). Heavy imports stay inside those
functions so that ``deeplabv1 --help`` is quick. Every parser is a ``Parser``, whose help shows
each option's default (for config flags, the dataclass default: their parser default is None so
that a ``--config`` file can fill what no flag gives).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from deeplabv1 import __version__
from deeplabv1.errors import DeepLabError, Terminated, error_message, os_error_message

EPILOG = """\
Run `deeplabv1 COMMAND --help` for a command's options and their defaults. Paper configs ship
with the package: `deeplabv1 train --list-configs`, then `--config NAME`.
"""


def _shown(value) -> str:
    """A default as it is typed on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return " ".join(_shown(v) for v in value) if value else "none"
    if value == "":
        return '""'
    return str(value)


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option that has one; config flags carry it in
    ``action.shown_default`` (see ``deeplabv1.config.add_config_args``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        value = getattr(action, "shown_default", action.default)
        if (
            not action.option_strings  # positionals
            or action.required
            or action.nargs == 0  # switches
            or value is None  # "unset": the help text says what happens then
            or value is argparse.SUPPRESS
            or "%(default)" in text
        ):
            return text
        shown = _shown(value).replace("%", "%%")
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


class RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """``HelpFormatter`` that keeps the description's own line breaks."""


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose help shows defaults; sub-parsers are ``Parser`` too.

    A command that asks for argparse's ``RawDescriptionHelpFormatter`` gets the variant above.
    """

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs) -> None:
        if formatter_class is argparse.RawDescriptionHelpFormatter:
            formatter_class = RawDescriptionHelpFormatter
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        """As argparse's; a command refuses flags it does not know itself, so that the error
        names it and shows its usage, not the top level's. (A command's own sub-command has
        refused its unknown flags first: what is left are this one's.)"""
        parsed, extra = super().parse_known_args(args, namespace)
        if extra and self.prog != "deeplabv1":
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed, extra


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
    "paper_table",
    "predict",
    "export",
    "plot",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every sub-command."""
    parser = Parser(
        prog="deeplabv1",
        description="DeepLab V1: atrous VGG16 + fully connected CRF (Chen et al., ICLR 2015).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"deeplabv1 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"deeplabv1.cli.{name}").add_parser(sub)
    return parser


# optional dependency (top-level module) -> the extra that installs it
EXTRAS = {"torch": "torch", "scipy": "torch", "matplotlib": "torch", "onnx": "onnx",
          "onnxruntime": "onnx", "tensorboard": "tensorboard"}  # fmt: skip


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The message 'needs X, which is not installed: pip install ...' for an optional
    dependency X of ``EXTRAS``, else None."""
    extra = EXTRAS.get((exc.name or "").partition(".")[0])
    if extra is None:
        return None
    return f'needs {exc.name}, which is not installed: pip install "deeplabv1[{extra}]"'


def report_error(command: str, message: str, exc: BaseException) -> None:
    """The command's one error line on stderr. Under torchrun rank 0 prints it; another rank
    stays silent when every rank has the same error (``GroupError``) and otherwise prints its
    own line naming the rank. An error found before the ranks joined their group comes from
    flags and files, the same for every process of a machine: the first process of each other
    machine (``LOCAL_RANK`` 0) prints it too, since a file may be missing on one machine only."""
    from deeplabv1.distributed.context import env_rank, env_world_size, joined_group
    from deeplabv1.distributed.work import GroupError

    rank = env_rank() if env_world_size() > 1 else 0
    if rank != 0:
        if isinstance(exc, GroupError):
            return
        if not joined_group() and os.environ.get("LOCAL_RANK", "0") != "0":
            return
        command = f"{command} (rank {rank})"
    print(f"deeplabv1 {command}: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:  # an optional dependency (the CRF needs none of them)
        hint = missing_extra(exc)
        if hint is None:
            raise
        print(f"deeplabv1 {args.command}: {hint}", file=sys.stderr)
        return 2
    except DeepLabError as exc:
        report_error(args.command, error_message(exc), exc)
        return 2
    except OSError as exc:  # a file the command could not read or write: name it, no traceback
        report_error(args.command, os_error_message(exc), exc)
        return 2
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated):  # SIGTERM, SIGHUP (train): 128 + the signal
            name = signal.Signals(exc.signum).name
            print(f"deeplabv1 {args.command}: terminated ({name})", file=sys.stderr)
            return 128 + exc.signum
        print(f"deeplabv1 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
