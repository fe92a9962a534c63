"""Flag helpers shared by ``deeplabv1 eval`` and ``deeplabv1 crf-search``."""

from __future__ import annotations

import argparse
import dataclasses
import typing


def parse_bool(text: str) -> bool:
    """true/false, yes/no, on/off, 1/0 (case-insensitive)."""
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def bool_fields(cls: type) -> tuple[str, ...]:
    """Names of the bool fields of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return tuple(f.name for f in dataclasses.fields(cls) if hints[f.name] is bool)


def add_switches(parser: argparse.ArgumentParser, cls: type) -> None:
    """Bool fields as switches: ``--crf`` alone means true, ``--crf false`` also works."""
    for f in dataclasses.fields(cls):
        if f.name in bool_fields(cls):
            parser.add_argument(
                "--" + f.name.replace("_", "-"), dest=f.name, type=parse_bool, nargs="?",
                const=True, default=None, metavar="BOOL", help=f.metadata.get("help", ""),
            )  # fmt: skip


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """``deeplabv1.config.add_config_args`` with bool fields turned into switches, plus -o."""
    from deeplabv1.config import add_config_args

    add_config_args(parser, cls, skip=bool_fields(cls))
    add_switches(parser, cls)
    parser.add_argument("-o", dest="out", type=str, default=None, help="output folder (= --out)")
