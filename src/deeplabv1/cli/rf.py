"""``deeplabv1 rf``: the layer-by-layer receptive-field table of a variant, walked from its modules.

    deeplabv1 rf --arch deeplab --input-size 306 [--plot rf.png]

Columns: kernel, stride, padding, dilation, effective kernel, jump (stride so far), receptive field
and output side. Below the table: why the paper says 128 (DeepLab) or 224 (LargeFOV) while the
true field is 308 or 435. ``--plot`` draws the growth for every variant.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from deeplabv1.cli.info import InfoConfig, model_kwargs


@dataclasses.dataclass
class RfConfig(InfoConfig):
    """Settings of ``deeplabv1 rf``."""

    plot: Path | None = dataclasses.field(
        default=None, metadata={"help": "also draw RF growth of all variants to this PNG"}
    )
    overwrite: bool = dataclasses.field(
        default=False, metadata={"help": "replace a --plot file deeplabv1 did not write"}
    )


def format_table(rows) -> str:
    """The table as aligned text."""
    head = ("layer", "type", "k", "s", "p", "d", "k_eff", "jump", "RF", "size")
    lines = [head]
    for r in rows:
        size = "-" if r.size is None else str(r.size)
        lines.append((r.name, r.kind, r.kernel, r.stride, r.padding, r.dilation, r.k_eff, r.jump,
                      r.rf, size))  # fmt: skip
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w)
                  for i, (v, w) in enumerate(zip(line, widths)))
        for line in lines
    )  # fmt: skip


def explain(rows, paper: int) -> str:
    """Why the paper's nominal figure differs from the true receptive field."""
    names = [r.name for r in rows]
    i = names.index("fc6")
    fc6, below = rows[i], rows[i - 1]
    span = (fc6.k_eff - 1) * below.jump
    true = rows[-1].rf
    return "\n".join(
        [
            f"True receptive field: {true} px = {below.rf} px (one {below.name} cell of the "
            f"atrous trunk) + {span} px (fc6 taps: (k_eff - 1) * jump = ({fc6.k_eff} - 1) * "
            f"{below.jump}).",
            f"Paper's nominal figure: {paper} px = {span} + 32: it counts only fc6's footprint, "
            f"in units of the 32-px cells of the original VGG16 pool5, i.e. (k - 1) * 8 * d + 32 "
            f"with k = {fc6.kernel}, d = {fc6.dilation}.",
            f"The gap, {true - paper} px = {below.rf} - 32, is the halo of the conv stack under "
            f"fc6: the field of one fc6 input cell is {below.rf} px, not 32.",
        ]
    )


def run(args) -> int:
    from deeplabv1.cli.plot import check_png_output
    from deeplabv1.config import resolve_config
    from deeplabv1.io import check_outputs, output_rules

    cfg = resolve_config(RfConfig, args)
    with output_rules((), overwrite=cfg.overwrite, command="rf"):
        if cfg.plot is not None:  # as `plot -o`: a PNG, and never a file of yours unasked
            check_png_output(Path(cfg.plot), "--plot", "rf draws a PNG image")
            check_outputs([cfg.plot])
        return _run(cfg)


def _run(cfg: RfConfig) -> int:
    import torch

    from deeplabv1.models import MODEL_NAMES, build_model
    from deeplabv1.models.receptive_field import branch_table, layer_table, paper_receptive_field

    with torch.device("meta"):
        model = build_model(cfg.arch, num_classes=cfg.num_classes, width=cfg.width,
                            **model_kwargs(cfg))  # fmt: skip
    rows = layer_table(model, cfg.input_size)
    print(f"{cfg.arch} {model.model_kwargs}, input {cfg.input_size} x {cfg.input_size}")
    print(format_table(rows))
    for src in model.msc_branch_names:
        branch = branch_table(model, src, cfg.input_size)
        print(f"MSc branch on {src}: receptive field {branch[-1].rf} px, jump {branch[-1].jump}")
    print()
    print(explain(rows, paper_receptive_field(model)))
    if cfg.plot is not None:
        from deeplabv1.viz.receptive_field import plot_receptive_field

        tables, paper = {}, {}
        with torch.device("meta"):
            for arch in MODEL_NAMES:
                net = build_model(arch, width=1 / 64)
                tables[arch] = layer_table(net)
                paper[arch] = paper_receptive_field(net)
        plot_receptive_field(tables, cfg.plot, paper=paper)
        print(f"wrote {cfg.plot}")
    return 0


def add_parser(subparsers) -> None:
    from deeplabv1.config import add_config_args

    p = subparsers.add_parser("rf", help="layer-by-layer receptive-field table of a variant")
    add_config_args(p, RfConfig)
    p.set_defaults(func=run)
