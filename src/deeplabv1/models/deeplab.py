"""The DeepLab V1 network and its six variants.

Every variant is the VGG16 trunk of :mod:`deeplabv1.models.vgg` (output stride 8) followed by
fc6 (atrous conv) -> ReLU -> dropout -> fc7 (1x1) -> ReLU -> dropout -> fc8 (1x1 -> classes).
Modules are registered flat under their Caffe layer names, so the state-dict keys are
``conv1_1.weight`` ... ``fc8.bias`` (+ the MSc branch layers) and converted weights map 1:1.

Assumptions about the variants the authors did not release (documented in docs/models.md):
DeepLab-7x7 and DeepLab-4x4 default to the 3x3-pool trunk (the likelier reading of the paper); pass
``trunk="2x2"`` for the other reading. fc6 always uses "same" padding ``(k_eff - 1) // 2``
(k_eff = dilation * (kernel - 1) + 1), which reproduces the released pads (6 for 4x4 dilation 4,
12 for 3x3 dilation 12).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deeplabv1.errors import DeepLabError
from deeplabv1.models.msc import (
    MSC_SOURCES,
    branch_layer_names,
    branch_scores,
    init_msc_branches,
    make_msc_branches,
)
from deeplabv1.models.test_net import TestNet, build_test_net, forward_test, run_layer
from deeplabv1.models.vgg import make_trunk, scaled

FC8_STD = 0.01


def make_head(
    in_channels: int, *, kernel: int, dilation: int, channels: int, num_classes: int,
    pool5a: bool = False,
) -> list[tuple[str, nn.Module]]:  # fmt: skip
    """[pool5a] fc6 .. fc8 as ``(name, module)`` pairs (pool5a = LargeFOV's avg pool)."""
    layers: list[tuple[str, nn.Module]] = []
    if pool5a:
        # Caffe AVE pooling divides by the padded window: count_include_pad=True
        avg = nn.AvgPool2d(3, 1, padding=1, ceil_mode=True, count_include_pad=True)
        layers.append(("pool5a", avg))
    k_eff = dilation * (kernel - 1) + 1
    layers += [
        ("fc6", nn.Conv2d(in_channels, channels, kernel, padding=(k_eff - 1) // 2,
                          dilation=dilation)),
        ("relu6", nn.ReLU(inplace=True)),
        ("drop6", nn.Dropout(0.5)),
        ("fc7", nn.Conv2d(channels, channels, 1)),
        ("relu7", nn.ReLU(inplace=True)),
        ("drop7", nn.Dropout(0.5)),
        ("fc8", nn.Conv2d(channels, num_classes, 1)),
    ]  # fmt: skip
    return layers


class DeepLabV1(nn.Module):
    """A DeepLab V1 network: Caffe input (B,3,H,W) -> raw fc8 scores on the stride-8 grid.

    ``forward`` is the released *train* network; ``forward_test`` the released *test* network
    (:mod:`deeplabv1.models.test_net`), which ``deeplabv1.models.inference`` runs.

    Attributes: ``arch`` (CLI name), ``num_classes``, ``width``, ``model_kwargs`` (builder
    settings, stored in checkpoints), ``path_names`` (main-path module names in forward order),
    ``classifier_names`` (the classifiers trained from scratch: fc8 and the MSc ``*_ms``),
    ``high_lr_names`` (layers trained at the classifier lr multiplier, x10: fc8 of the plain
    variants; none in MSc, which the release trains at x1), ``msc_branch_names`` (source blobs of
    the MSc branches, empty otherwise), ``msc_layer_names`` (all branch module names) and
    ``test_net`` (a :class:`~deeplabv1.models.test_net.TestNet`).
    """

    def __init__(
        self,
        path: list[tuple[str, nn.Module]],
        *,
        arch: str,
        num_classes: int,
        width: float,
        model_kwargs: dict[str, Any],
        msc: bool = False,
        msc_init: str = "release",
        test: TestNet | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = int(num_classes)
        self.width = float(width)
        self.model_kwargs = dict(model_kwargs)
        for name, module in path:
            self.add_module(name, module)
        self.path_names = tuple(name for name, _ in path)
        self.msc_branch_names: tuple[str, ...] = ()
        self.msc_layer_names: tuple[str, ...] = ()
        if msc:
            channels = {"data": 3}
            for name, module in path:
                if name.startswith("conv"):
                    last = module.out_channels
                if name.startswith("pool"):
                    channels[name] = last
            for name, module in make_msc_branches(channels, num_classes=num_classes, width=width):
                self.add_module(name, module)
            self.msc_branch_names = tuple(src for src, _ in MSC_SOURCES)
            self.msc_layer_names = sum((branch_layer_names(s) for s in self.msc_branch_names), ())
        self.classifier_names = ("fc8",) + tuple(f"{s}_ms" for s in self.msc_branch_names)
        self.high_lr_names = () if msc else ("fc8",)
        self.msc_init = msc_init
        self.test_net = test or TestNet()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as released: fc8 N(0, 0.01); MSc branches per ``msc_init``; trunk random.

        The trunk (conv1_1 .. fc7) is meant to come from converted ImageNet weights; without them
        it gets He-normal (fan_out, ReLU) weights and zero biases, as torchvision's VGG does.
        """
        for name in self.path_names:
            module = getattr(self, name)
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.fc8.weight, 0.0, FC8_STD)
        nn.init.zeros_(self.fc8.bias)
        if self.msc_branch_names:
            init_msc_branches(self, self.msc_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The training network: stride-8 scores (MSc: fc8 + the five branches, summed)."""
        return self.fuse(*self.run_path(x))

    def forward_test(self, x: torch.Tensor) -> torch.Tensor:
        """The released test network (see :mod:`deeplabv1.models.test_net`); its output is
        zoomed by ``test_net.factor`` and cropped by ``test_net.crop`` to give the final map."""
        return forward_test(self, x)

    def run_path(
        self, x: torch.Tensor, overrides: dict[str, dict[str, int]] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Main path (with per-module setting ``overrides``): fc8 scores and the MSc sources."""
        taps = set(self.msc_branch_names)
        blobs = {"data": x}
        h = x
        for name in self.path_names:
            h = run_layer(getattr(self, name), h, (overrides or {}).get(name))
            if name in taps:
                blobs[name] = h
        return h, blobs

    def fuse(self, h: torch.Tensor, blobs: dict[str, torch.Tensor]) -> torch.Tensor:
        """fc8 plus every MSc branch on the stride-8 grid (the training forward's sum)."""
        out_hw = (h.shape[-2], h.shape[-1])
        for src in self.msc_branch_names:
            h = h + branch_scores(self, src, blobs[src], out_hw)
        return h

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, num_classes={self.num_classes}, width={self.width}"


def build_deeplab(
    arch: str,
    *,
    num_classes: int,
    width: float,
    trunk: str,
    pool4_pad: int | None,
    fc6_kernel: int,
    fc6_dilation: int,
    fc6_channels: int,
    pool5a: bool = False,
    msc: bool = False,
    msc_init: str = "release",
    test_pool4_pad: int | None = None,
    msc_test: str = "dense",
    model_kwargs: dict[str, Any],
) -> DeepLabV1:
    """Assemble trunk + head (+ MSc branches) into a :class:`DeepLabV1`."""
    if int(num_classes) < 1:
        raise DeepLabError(f"num_classes must be >= 1, got {num_classes}")
    if not width > 0:
        raise DeepLabError(f"width must be > 0, got {width}")
    path, channels = make_trunk(trunk, width=width, pool4_pad=pool4_pad)
    path += make_head(
        channels,
        kernel=fc6_kernel,
        dilation=fc6_dilation,
        channels=scaled(fc6_channels, width),
        num_classes=num_classes,
        pool5a=pool5a,
    )
    test = build_test_net(
        trunk=trunk, pool4_pad=pool4_pad, test_pool4_pad=test_pool4_pad,
        msc_sources=MSC_SOURCES if msc else (), msc_test=msc_test,
    )  # fmt: skip
    return DeepLabV1(
        path,
        arch=arch,
        num_classes=num_classes,
        width=width,
        model_kwargs=model_kwargs,
        msc=msc,
        msc_init=msc_init,
        test=test,
    )
