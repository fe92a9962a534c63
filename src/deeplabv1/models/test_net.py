"""The released test networks: what the authors' test prototxts change against the train ones.

The same weights run a slightly different network at test time (the release's
``*_test.prototxt`` files):

- **DeepLab** (2x2-pool trunk): pool4 with pad 1 instead of 0, input 514 (= 8 * 64 + 2, padded
  with the mean colour), a 67-cell score map zoomed x8 with align-corners to 529 pixels, then
  ``PADDING pad_beg -7 / pad_end -8``: crop 7 pixels at the start so that the map is aligned with
  the input. Setting ``test_pool4_pad=0`` keeps the training geometry instead (no crop).
- **MSc** (``msc_test="dense"``): the branches' first convolutions run at stride 1 (dense), every
  branch classifier and fc8 is zoomed to full resolution (data x1, pool1 x2, pool2 x4, pool3 x8,
  pool4 x8, fc8 x8) and the six maps are summed there, in the release's order.
  ``msc_test="stride8"`` runs the training forward (the sum on the stride-8 grid) and zooms it.
- **LargeFOV**: the test network is the training one (input 513, zoom x8 to 513, no crop).

:class:`TestNet` describes this per model; :func:`forward_test` runs it. The zoom, the crop to
the image and the padding of the input live in :mod:`deeplabv1.models.inference`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from deeplabv1.errors import DeepLabError
from deeplabv1.models.inference import OUTPUT_STRIDE, zoom_scores

MSC_TESTS = ("dense", "stride8")


@dataclass(frozen=True)
class TestNet:
    """How a model's test network differs from its training network.

    ``overrides``: per module, settings changed at test time (``{"pool4": {"padding": 1}}``,
    ``{"data_conv": {"stride": 1}}``). ``zooms``: the score maps zoomed to full resolution and
    summed, in order, with their zoom factors (``{"fc8": 8}`` for one map). ``crop``: pixels cut
    at the start of the zoomed map. ``grid``: the input sides the network is made for are
    ``8k + grid`` (513 = 8 * 64 + 1; DeepLab's 514 = 8 * 64 + 2).
    """

    __test__ = False  # not a pytest class

    overrides: dict[str, dict[str, int]] = field(default_factory=dict)
    zooms: dict[str, int] = field(default_factory=lambda: {"fc8": OUTPUT_STRIDE})
    crop: int = 0
    grid: int = 1

    @property
    def factor(self) -> int:
        """Zoom factor of :func:`forward_test`'s output (1 when the sum is at full size)."""
        return 1 if len(self.zooms) > 1 else next(iter(self.zooms.values()))


def build_test_net(
    *, trunk: str, pool4_pad: int | None, test_pool4_pad: int | None, msc_sources=(), msc_test=None
) -> TestNet:
    """The :class:`TestNet` of a variant from its builder settings (see the module docstring)."""
    overrides: dict[str, dict[str, int]] = {}
    crop, grid = 0, 1
    if trunk == "2x2":
        train_pad = 0 if pool4_pad is None else int(pool4_pad)
        test_pad = 1 if test_pool4_pad is None else int(test_pool4_pad)
        if test_pad not in (0, 1):
            raise DeepLabError(f"test_pool4_pad must be 1 (released test) or 0, got {test_pad}")
        if test_pad != train_pad:
            overrides["pool4"] = {"padding": test_pad}
        grid = 2  # the release's 2x2-pool inputs are 8k + 2 (306, 514)
        if test_pad == 1:  # 8k + 2 input -> k + 3 cells -> 8k + 17 zoomed: crop 7 / 8
            crop = 7
    elif test_pool4_pad is not None:
        raise DeepLabError("test_pool4_pad is a setting of the 2x2-pool trunk only")
    if not msc_sources:
        return TestNet(overrides, {"fc8": OUTPUT_STRIDE}, crop, grid)
    if msc_test not in MSC_TESTS:
        raise DeepLabError(f"msc_test must be one of {', '.join(MSC_TESTS)}, got {msc_test!r}")
    if msc_test == "stride8":
        return TestNet(overrides, {"fc_fusion": OUTPUT_STRIDE}, crop, grid)
    zooms = {}
    for src, stride in msc_sources:
        if stride != 1:
            overrides[f"{src}_conv"] = {"stride": 1}
        zooms[f"{src}_ms"] = OUTPUT_STRIDE // stride  # the source blob's own stride
    zooms["fc8"] = OUTPUT_STRIDE
    return TestNet(overrides, zooms, crop, grid)


def run_layer(module: nn.Module, x: torch.Tensor, settings: dict[str, int] | None) -> torch.Tensor:
    """``module(x)`` with some of its settings changed (a conv's stride, a pool's padding)."""
    if not settings:
        return module(x)
    if isinstance(module, nn.Conv2d):
        stride = settings.get("stride", module.stride)
        return F.conv2d(x, module.weight, module.bias, stride, module.padding, module.dilation)
    if isinstance(module, nn.MaxPool2d):
        pad = settings.get("padding", module.padding)
        return F.max_pool2d(x, module.kernel_size, module.stride, pad, ceil_mode=module.ceil_mode)
    raise DeepLabError(f"no test-time setting for {type(module).__name__}")


def forward_test(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The test network's scores for Caffe input ``x`` (B,3,H,W), before the final zoom.

    With several maps (MSc dense) they are zoomed and summed here: the result is full size
    (``TestNet.factor`` 1); otherwise it is the stride-8 map (factor 8).
    """
    from deeplabv1.models.msc import branch_layer_names

    net: TestNet = model.test_net
    h, blobs = model.run_path(x, net.overrides)
    if len(net.zooms) == 1:  # one map: fc8, or the training forward's stride-8 MSc sum
        return model.fuse(h, blobs)
    maps = {"fc8": h}
    for src in model.msc_branch_names:
        b = blobs[src]
        for name in branch_layer_names(src):
            b = run_layer(getattr(model, name), b, net.overrides.get(name))
        maps[f"{src}_ms"] = b
    out = None
    for name, factor in net.zooms.items():  # Caffe's ELTWISE SUM: 0 + first + second + ...
        zoomed = zoom_scores(maps[name], factor) if factor > 1 else maps[name]
        if out is not None and zoomed.shape != out.shape:
            raise DeepLabError(
                f"{model.arch}: the dense test sums maps of {tuple(out.shape[-2:])} and "
                f"{tuple(zoomed.shape[-2:])} pixels: pad the input to a side of 8k + 1"
            )
        out = zoomed if out is None else out + zoomed
    return out
