"""Receptive fields: the layer recursion over the modules, and an empirical gradient check."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from deeplabv1.models import MODEL_NAMES, build_model
from deeplabv1.models.receptive_field import (
    branch_table,
    geometry_model,
    layer_table,
    paper_receptive_field,
    receptive_field,
)

SPEC_RF = {"deeplab": 308, "deeplab-7x7": 419, "deeplab-4x4": 419, "deeplab-largefov": 435,
           "deeplab-msc": 323, "deeplab-msc-largefov": 435}  # fmt: skip
PAPER_RF = {"deeplab": 128, "deeplab-7x7": 224, "deeplab-4x4": 224, "deeplab-largefov": 224,
            "deeplab-msc": 128, "deeplab-msc-largefov": 224}  # fmt: skip


@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_true_and_paper_receptive_fields(arch):
    model = geometry_model(arch)
    assert receptive_field(model) == SPEC_RF[arch]
    assert paper_receptive_field(model) == PAPER_RF[arch]


def test_receptive_field_settings():
    assert receptive_field(geometry_model("deeplab-largefov", pool5a=False)) == 419
    assert receptive_field(geometry_model("deeplab-7x7", trunk="2x2")) == 404
    assert receptive_field(geometry_model("deeplab-4x4", trunk="2x2")) == 404
    assert receptive_field(geometry_model("deeplab", pool4_pad=1)) == 308


def test_table_follows_the_modules():
    model = build_model("deeplab-largefov", width=1 / 64)
    rows = layer_table(model, 321)
    assert [r.name for r in rows[1:]] == [
        n for n in model.path_names if isinstance(getattr(model, n), (nn.Conv2d, nn.MaxPool2d,
                                                                      nn.AvgPool2d))
    ]  # fmt: skip
    fc6 = rows[[r.name for r in rows].index("fc6")]
    assert (fc6.kernel, fc6.dilation, fc6.k_eff, fc6.jump, fc6.size) == (3, 12, 25, 8, 41)
    # editing a module changes the table: nothing is read from a second hand-written list
    model.fc6.dilation = (4, 4)
    assert layer_table(model)[-1].rf == 435 - 8 * 8 * 2


def test_msc_branch_fields():
    model = geometry_model("deeplab-msc")
    assert [branch_table(model, s)[-1].rf for s in model.msc_branch_names] == [3, 11, 27, 67, 131]
    assert all(branch_table(model, s)[-1].jump == 8 for s in model.msc_branch_names)


def linearised(model: nn.Module) -> nn.Module:
    """Same geometry, but linear and positive: max pools -> avg pools, no ReLU, weights > 0.

    Then d out / d input is > 0 exactly on the receptive field (no argmax routing, no dead units,
    no cancellation), so its nonzero extent measures the field.
    """
    model = copy.deepcopy(model).double().eval()
    for name, module in list(model.named_children()):
        if isinstance(module, nn.MaxPool2d):
            setattr(model, name, nn.AvgPool2d(module.kernel_size, module.stride, module.padding,
                                              ceil_mode=True))  # fmt: skip
        elif isinstance(module, nn.ReLU):
            setattr(model, name, nn.Identity())
        elif isinstance(module, nn.Conv2d):
            fan_in = module.weight[0].numel()
            nn.init.constant_(module.weight, 1.0 / fan_in)
    return model


def empirical_extent(model: nn.Module, side: int, row: int, col: int) -> tuple[int, int, int]:
    """(first row, last row, width) of input pixels that move output pixel (row, col)."""
    x = torch.zeros(1, 3, side, side, dtype=torch.float64, requires_grad=True)
    out = model(x)
    out[0, 0, row, col].backward()
    support = x.grad[0].abs().sum(0) > 0
    rows = torch.nonzero(support.any(1)).flatten()
    cols = torch.nonzero(support.any(0)).flatten()
    return int(rows[0]), int(rows[-1]), int(cols[-1] - cols[0] + 1)


@pytest.mark.parametrize("arch,side,cell", [("deeplab", 360, 22), ("deeplab-largefov", 480, 30),
                                            ("deeplab-msc", 360, 22)])  # fmt: skip
def test_receptive_field_by_gradient(arch, side, cell):
    model = linearised(build_model(arch, width=1 / 32, num_classes=1))
    first, last, width = empirical_extent(model, side, cell, cell)
    assert first > 0 and last < side - 1  # the whole field lies inside the input
    assert last - first + 1 == width == receptive_field(model) == SPEC_RF[arch]
    if arch != "deeplab":  # 3x3-pool trunk: odd field centred on pixel 8 * cell
        assert (first + last) / 2 == 8 * cell


def test_msc_branches_centred_on_the_score_grid():
    model = linearised(build_model("deeplab-msc-largefov", width=1 / 32, num_classes=1))
    nn.init.zeros_(model.fc8.weight)  # silence the trunk: only the five branches remain
    first, last, width = empirical_extent(model, 200, 12, 12)
    assert (first, last, width) == (96 - 65, 96 + 65, 131)
