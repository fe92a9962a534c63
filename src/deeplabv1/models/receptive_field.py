"""Receptive field and score-map geometry, walked from a built network's own modules.

For every conv / pooling module on the main path (``model.path_names``) in forward order:
k_eff = dilation * (kernel - 1) + 1, rf <- rf + (k_eff - 1) * jump, jump <- jump * stride,
and the output side follows Caffe's rules: convolution floor((n + 2p - k_eff) / s) + 1, pooling
ceil((n + 2p - k) / s) + 1 minus one when the last window would start inside the padding
(PyTorch's ``ceil_mode=True`` does the same). Nothing here is a second hand-written layer list.

The paper's nominal figure counts only fc6's footprint in units of the 32-px cells of the
original VGG16 pool5: (k - 1) * d * jump + 32, with jump = 8 at fc6 (128 for DeepLab, 224 for
7x7, 4x4 and LargeFOV). The true field adds the halo of the conv stack under fc6.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from deeplabv1.errors import DeepLabError

VGG_POOL5_CELL = 32  # px: stride of VGG16's pool5, the paper's unit for the fc6 footprint
SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


@dataclass(frozen=True)
class LayerGeometry:
    """One row of the receptive-field table (values after the layer)."""

    name: str
    kind: str
    kernel: int
    stride: int
    padding: int
    dilation: int
    k_eff: int
    jump: int
    rf: int
    size: int | None

    def as_dict(self) -> dict:
        return asdict(self)


def _first(v) -> int:
    return int(v[0] if isinstance(v, tuple | list) else v)


def layer_params(module: nn.Module) -> tuple[int, int, int, int]:
    """(kernel, stride, padding, dilation) of a square conv or pooling module."""
    dilation = _first(getattr(module, "dilation", 1))
    return (_first(module.kernel_size), _first(module.stride), _first(module.padding), dilation)


def next_size(module: nn.Module, n: int) -> int:
    """Output side of ``module`` for an input side ``n`` (Caffe / PyTorch arithmetic)."""
    k, s, p, d = layer_params(module)
    k_eff = d * (k - 1) + 1
    if isinstance(module, nn.Conv2d) or not getattr(module, "ceil_mode", False):
        out = (n + 2 * p - k_eff) // s + 1
    else:
        out = math.ceil((n + 2 * p - k_eff) / s) + 1
        if (out - 1) * s >= n + p:  # last window would start in the padding: dropped
            out -= 1
    if out < 1:
        raise DeepLabError(f"input too small: {type(module).__name__} gets side {n}")
    return out


def _walk(named, rf: int, jump: int, size: int | None) -> list[LayerGeometry]:
    rows = []
    for name, module in named:
        k, s, p, d = layer_params(module)
        k_eff = d * (k - 1) + 1
        rf += (k_eff - 1) * jump
        jump *= s
        size = None if size is None else next_size(module, size)
        kind = type(module).__name__
        rows.append(LayerGeometry(name, kind, k, s, p, d, k_eff, jump, rf, size))
    return rows


def _spatial(model: nn.Module, names) -> list[tuple[str, nn.Module]]:
    pairs = [(n, getattr(model, n)) for n in names]
    return [(n, m) for n, m in pairs if isinstance(m, SPATIAL)]


def layer_table(model: nn.Module, input_size: int | None = None) -> list[LayerGeometry]:
    """Rows for the input ("data") and every conv / pool on the main path, in forward order."""
    start = LayerGeometry("data", "input", 1, 1, 0, 1, 1, 1, 1, input_size)
    return [start] + _walk(_spatial(model, model.path_names), 1, 1, input_size)


def branch_table(model: nn.Module, src: str, input_size: int | None = None) -> list[LayerGeometry]:
    """Rows of MSc branch ``src`` (its conv layers), continuing from its source blob's row."""
    from deeplabv1.models.msc import branch_layer_names

    source = next(r for r in layer_table(model, input_size) if r.name == src)
    return _walk(_spatial(model, branch_layer_names(src)), source.rf, source.jump, source.size)


def receptive_field(model: nn.Module) -> int:
    """The true theoretical receptive field (px) of one output score of ``model``.

    For MSc models it is the trunk's: every branch field is centred on the same pixel and smaller.
    """
    rf = layer_table(model)[-1].rf
    for src in getattr(model, "msc_branch_names", ()):
        rf = max(rf, branch_table(model, src)[-1].rf)
    return rf


def paper_receptive_field(model: nn.Module) -> int:
    """The paper's nominal figure: fc6's footprint (k - 1) * d * jump + one 32-px VGG cell."""
    rows = {r.name: r for r in layer_table(model)}
    names = [r.name for r in layer_table(model)]
    fc6 = rows["fc6"]
    jump_in = rows[names[names.index("fc6") - 1]].jump
    return (fc6.kernel - 1) * fc6.dilation * jump_in + VGG_POOL5_CELL


def geometry_model(arch_or_model: str | nn.Module, **kwargs) -> nn.Module:
    """The model itself, or a tiny parameter-free (meta device) build of the named arch."""
    if isinstance(arch_or_model, nn.Module):
        return arch_or_model
    from deeplabv1.models import build_model

    with torch.device("meta"):  # geometry does not depend on width or weights
        return build_model(arch_or_model, width=1 / 64, **kwargs)


def output_size(arch_or_model: str | nn.Module, input_size: int, **kwargs) -> int:
    """Side of the score map for an ``input_size`` x ``input_size`` input (from the modules)."""
    return layer_table(geometry_model(arch_or_model, **kwargs), int(input_size))[-1].size
