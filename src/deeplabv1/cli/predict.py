"""`deeplabv1 predict`: segment image files, folders or glob patterns with a checkpoint."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Segment images with a checkpoint from `deeplabv1 train` or `deeplabv1 convert`. Per image
<stem>: <stem>_net.png (class-index palette PNG), <stem>_net_overlay.png, with --crf also
<stem>_crf.png and <stem>_crf_overlay.png, with --side-by-side <stem>_figure.png. Any image mode
is accepted (EXIF orientation applied; transparency composited on --background). Images are
padded to --test-size (513, the paper); longer sides to the next 8k+1. Unreadable files are
reported and skipped; the exit status is then 1. --resume skips images whose outputs are
complete. Under torchrun each process segments its share of the inputs, e.g.
`torchrun --standalone --nproc-per-node 4 -m deeplabv1 predict photos/ --weights m.pt --crf
--device cuda -o out/`.
"""


def add_parser(subparsers) -> None:
    from deeplabv1.config import add_config_args
    from deeplabv1.predict.batch import PredictConfig

    p = subparsers.add_parser(
        "predict", help="segment images (label PNGs, overlays, figures)", description=DESCRIPTION
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    p.add_argument("-o", "--output", dest="output", default=None, help="output folder")
    p.add_argument("--weights", dest="weights", default=None, metavar="MODEL.pt",
                   help="checkpoint (deeplabv1 train / convert)")  # fmt: skip
    # switches with a --no- form, so that a flag can turn off what a --config file turned on
    # (not `--crf [BOOL]`, which would take the INPUT after it for its value)
    flags = {"crf": "also run the dense CRF (default: off)",
             "side_by_side": "write the paper-style figure (default: off)"}  # fmt: skip
    for name, text in flags.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name,
                       action=argparse.BooleanOptionalAction, default=None, help=text)  # fmt: skip
    p.add_argument(
        "--gt",
        dest="gt",
        default=None,
        metavar="DIR",
        help="ground-truth label PNGs <stem>_label.png or <stem>.png for the figure",
    )
    add_config_args(p, PredictConfig, skip=("inputs", "output", "weights", "gt", *flags))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deeplabv1.config import resolve_config
    from deeplabv1.predict.batch import PredictConfig, run_predict

    return run_predict(resolve_config(PredictConfig, args))
