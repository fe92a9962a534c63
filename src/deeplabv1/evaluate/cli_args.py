"""Flag helper shared by ``deeplabv1 eval`` and ``deeplabv1 crf-search``."""

from __future__ import annotations

import argparse


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """``deeplabv1.config.add_config_args`` (bool fields are switches there) plus ``-o``."""
    from deeplabv1.config import add_config_args

    add_config_args(parser, cls)
    parser.add_argument("-o", dest="out", type=str, default=None, help="output folder (= --out)")
