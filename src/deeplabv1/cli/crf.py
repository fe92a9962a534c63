"""`deeplabv1 crf`: the DeepLab dense CRF on saved score maps, one pair or whole folders.

Single:  deeplabv1 crf --image IMG --scores SCORES.npy -o OUT.png|OUT.npy [--params NAME]
Batch:   deeplabv1 crf --image-dir IMGS --scores-dir NPYS --out-dir OUT [--out-format png|npy|both]

SCORES.npy is a (C, H, W) float array of raw (pre-softmax) scores at the image's resolution
(--probabilities for softmax outputs, --channels-last for (H, W, C) arrays). Low-resolution
scores: --upsample 8 zooms them x8 (bilinear, aligned corners, as DeepLab) and cuts the result to
the image; --upsample image stretches them to the image's size. Outputs: OUT.png is the palette
PNG of the arg-max labels, OUT.npy the marginals (C, H, W) float32; batch mode writes <stem>.png,
<stem>.npy or both (--out-format). Batch pairs are matched by file stem; each pair runs in a
worker process (one thread each, every core by default) and a bad file is reported by name while
the rest continue; crf_summary.json lists the pairs processed, failed and skipped. The exit
status is 1 if anything failed or lacked a partner. --resume skips pairs whose outputs an
earlier run with the same settings left complete. On the CPU (numba installed) the command runs
on the torch-free engine and never imports torch.

Under torchrun each process takes its share of the pairs, e.g.
`torchrun --standalone --nproc-per-node 4 -m deeplabv1 crf --image-dir IMGS --scores-dir NPYS
--out-dir OUT --resume`; --device cuda puts each process on cuda:LOCAL_RANK.

Images are read as `deeplabv1 predict` reads them (any mode, EXIF orientation, transparency on
--background, at most --max-megapixels). Outputs never replace an input, nor a file deeplabv1 did
not write unless --overwrite; --out-dir may not be --image-dir or --scores-dir nor lie inside
either.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field, replace
from typing import Literal

from deeplabv1.cli.crf_files import ScoreSettings
from deeplabv1.crf.params import std_problem, variant_problem, weight_problem
from deeplabv1.errors import DeepLabError


def _help(text: str, check=None):
    return field(default=None, metadata={"help": text, "check": check})


@dataclass
class CRFConfig(ScoreSettings):
    """Settings of `deeplabv1 crf` (flags, or keys of a --config YAML file)."""

    image: str | None = _help("input image (single mode)")
    scores: str | None = _help("(C, H, W) .npy raw scores for --image (single mode)")
    image_dir: str | None = _help("folder of images (batch mode)")
    scores_dir: str | None = _help("folder of <stem>.npy score files (batch mode)")
    out_dir: str | None = _help("output folder (batch mode)")
    out_format: Literal["png", "npy", "both"] = field(
        default="png", metadata={"help": "batch outputs: <stem>.png label maps, <stem>.npy "
                                 "marginals (C, H, W) float32, or both"},
    )  # fmt: skip
    params: str = field(
        default="deeplab-largefov",
        metadata={"help": "variant whose CRF parameters to use", "check": variant_problem},
    )
    w1: float | None = _help("bilateral weight (overrides --params)", weight_problem)
    sa: float | None = _help("bilateral position std dev in pixels (overrides --params)",
                             std_problem)  # fmt: skip
    sb: float | None = _help("bilateral colour std dev, 0-255 units (overrides --params)",
                             std_problem)  # fmt: skip
    w2: float | None = _help("Gaussian weight (overrides --params)", weight_problem)
    sg: float | None = _help("Gaussian position std dev in pixels (overrides --params)",
                             std_problem)  # fmt: skip
    iters: int = field(default=10, metadata={"help": "mean-field iterations"})
    normalization: Literal["after", "symmetric", "before", "none"] = field(
        default="after", metadata={"help": "kernel normalisation (DeepLab: after)"}
    )
    device: Literal["cpu", "cuda"] = field(default="cpu", metadata={"help": "cpu or cuda"})
    workers: int = field(default=0, metadata={"help": "batch processes (0: every core)"})
    overwrite: bool = field(
        default=False, metadata={"help": "replace existing outputs deeplabv1 did not write"}
    )
    resume: bool = field(
        default=False,
        metadata={"help": "batch mode: skip pairs whose outputs an earlier run with the same "
                  "settings and pairs left complete in --out-dir"},
    )  # fmt: skip

    def validate(self) -> None:
        """Reject impossible values, naming the setting."""
        from deeplabv1.config import check_types

        check_types(self, "crf")
        if self.iters < 0:
            raise DeepLabError(f"crf: iters (--iters) must be >= 0, got {self.iters}")
        if self.workers < 0:
            raise DeepLabError(f"crf: workers (--workers) must be >= 0, got {self.workers}")
        self.max_pixels()
        self.upsample_mode()


def add_parser(subparsers) -> None:
    from deeplabv1.config import add_config_args

    p = subparsers.add_parser(
        "crf",
        help="dense CRF post-processing of saved score maps",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-o", "--output", default=None,
                   help="output (single mode): OUT.png labels or OUT.npy marginals")  # fmt: skip
    add_config_args(p, CRFConfig)
    p.set_defaults(func=run)


def resolve_params(cfg: CRFConfig):
    """CRFParams from --params with any of --w1 --sa --sb --w2 --sg replacing its values."""
    from deeplabv1.crf import get_params

    try:
        base = get_params(cfg.params)
        overrides = {k: getattr(cfg, k) for k in ("w1", "sa", "sb", "w2", "sg")}
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise DeepLabError(str(exc)) from exc


def run(args) -> int:
    from deeplabv1.config import resolve_config

    cfg = resolve_config(CRFConfig, args)
    cfg.validate()
    _quiet_warnings()
    params = resolve_params(cfg)
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise DeepLabError("--device cuda: no CUDA GPU available")
    single = (cfg.image, cfg.scores, args.output)
    batch = (cfg.image_dir, cfg.scores_dir, cfg.out_dir)
    if any(single) and any(batch):
        raise DeepLabError("give either --image/--scores/-o or --image-dir/--scores-dir/--out-dir")
    if any(single):
        if not all(single):
            raise DeepLabError("single mode needs --image, --scores and -o/--output")
        if cfg.resume:
            raise DeepLabError("--resume applies to batch mode (--image-dir ... --out-dir)")
        from deeplabv1.cli.crf_files import crf_file, output_kind
        from deeplabv1.io import check_outputs, output_rules

        kind = output_kind(args.output)
        with output_rules([cfg.image, cfg.scores], overwrite=cfg.overwrite, command="crf"):
            check_outputs([args.output])  # before the work, not after
            labels = crf_file(cfg.image, cfg.scores, args.output, params, **_options(cfg))
        print(f"wrote {args.output} ({kind}, {labels.shape[1]} x {labels.shape[0]})")
        return 0
    if not all(batch):
        raise DeepLabError("batch mode needs --image-dir, --scores-dir and --out-dir")
    from deeplabv1.cli.crf_batch import run_batch

    return run_batch(cfg, params, _options(cfg))


def _quiet_warnings() -> None:
    """torch's "sparse CSR is beta" notice says nothing a CLI user can act on."""
    import warnings

    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def _options(cfg: CRFConfig) -> dict:
    return dict(
        iters=cfg.iters,
        normalization=cfg.normalization,
        device=cfg.device,
        probabilities=cfg.probabilities,
        channels_last=cfg.channels_last,
        upsample=cfg.upsample_mode(),
        background=cfg.background,
        max_pixels=cfg.max_pixels(),
    )


if __name__ == "__main__":
    from deeplabv1.cli import main

    sys.exit(main(["crf", *sys.argv[1:]]))
