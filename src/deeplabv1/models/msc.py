"""DeepLab-MSc: five two-layer MLP branches on the image and pool1..pool4.

Each branch is: conv 3x3 -> 128 ch (+ReLU, dropout 0.5), conv 1x1 -> 128 ch (+ReLU, dropout 0.5),
conv 1x1 -> classes. In the training network the 3x3 conv has pad 1 and a stride chosen so that
the branch lands on the stride-8 score grid: image 8, pool1 4, pool2 2, pool3 1, pool4 1, and
the five branch score maps are summed with fc8 there (the paper's "concatenate 5 x 128 = 640
channels, then classify" is the same linear map written as one classifier per branch). The
released test network runs the branches densely and sums at full resolution instead
(:mod:`deeplabv1.models.test_net`).

Layer names are the released DeepLab-MSc prototxt's: for a source blob ``src`` in
``data, pool1, pool2, pool3, pool4`` the parameter layers are ``<src>_conv`` (3x3), ``<src>_fc``
(1x1) and ``<src>_ms`` (classifier), with ``relu_<src>_conv``, ``drop_<src>_conv``,
``relu_<src>_fc``, ``drop_<src>_fc`` in between.

Initialisation (``msc_init``): ``"release"`` (default) uses the released train prototxt's
fillers: the two branch convs N(0, 0.001) except ``pool4_fc`` N(0, 0.005), the classifiers
N(0, 0.01) except ``pool3_ms``, which has no filler (Caffe's default: constant 0); biases 0.
``"paper"`` is the plain reading (every branch conv N(0, 0.001), every classifier N(0, 0.01)).

Caffe requires every summed map to have the same size, which holds for inputs of side 8k+1
(321, 513). For other sides ceil-mode pooling can give the trunk one more row/column than a
strided branch conv; the branch input is then zero-padded at the bottom/right just enough to
reach the trunk's grid (zero = the mean colour for ``data``, and ReLU/max-pool outputs are >= 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deeplabv1.errors import DeepLabError
from deeplabv1.models.vgg import scaled

# (source blob, stride of the branch's first conv)
MSC_SOURCES: tuple[tuple[str, int], ...] = (
    ("data", 8), ("pool1", 4), ("pool2", 2), ("pool3", 1), ("pool4", 1),
)  # fmt: skip
MSC_HIDDEN = 128
MSC_CONV_STD = 0.001
MSC_CLASSIFIER_STD = 0.01
MSC_INITS = ("release", "paper")
MSC_INIT_ALIASES = {"prototxt": "release", "spec": "paper"}  # names of earlier versions
RELEASE_STD = {"pool4_fc": 0.005, "pool3_ms": 0.0}  # where the release's fillers differ


def branch_layer_names(src: str) -> tuple[str, ...]:
    """Module names of one branch in forward order (parameter-free layers included)."""
    return (
        f"{src}_conv", f"relu_{src}_conv", f"drop_{src}_conv",
        f"{src}_fc", f"relu_{src}_fc", f"drop_{src}_fc",
        f"{src}_ms",
    )  # fmt: skip


def make_msc_branches(
    source_channels: dict[str, int], *, num_classes: int, width: float = 1.0
) -> list[tuple[str, nn.Module]]:
    """The five branches as flat ``(name, module)`` pairs; ``source_channels`` maps src -> ch."""
    hidden = scaled(MSC_HIDDEN, width)
    layers: list[tuple[str, nn.Module]] = []
    for src, stride in MSC_SOURCES:
        names = branch_layer_names(src)
        modules = (
            nn.Conv2d(source_channels[src], hidden, 3, stride=stride, padding=1),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Conv2d(hidden, num_classes, 1),
        )
        layers.extend(zip(names, modules))
    return layers


def init_msc_branches(model: nn.Module, msc_init: str = "release") -> None:
    """Initialise the branches: ``"release"`` fillers or the ``"paper"`` reading (see above)."""
    msc_init = MSC_INIT_ALIASES.get(msc_init, msc_init)
    if msc_init not in MSC_INITS:
        raise DeepLabError(f"msc_init must be one of {', '.join(MSC_INITS)}, got {msc_init!r}")
    for src, _ in MSC_SOURCES:
        for name, std in ((f"{src}_conv", MSC_CONV_STD), (f"{src}_fc", MSC_CONV_STD),
                          (f"{src}_ms", MSC_CLASSIFIER_STD)):  # fmt: skip
            if msc_init == "release":
                std = RELEASE_STD.get(name, std)
            conv = getattr(model, name)
            if std > 0:
                nn.init.normal_(conv.weight, 0.0, std)
            else:
                nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)


def _pad_to_grid(x: torch.Tensor, conv: nn.Conv2d, out_hw: tuple[int, int]) -> torch.Tensor:
    """Zero-pad ``x`` at the bottom/right so that ``conv`` yields at least ``out_hw``."""
    stride, pad, kernel = conv.stride[0], conv.padding[0], conv.kernel_size[0]
    extra = []
    for size, target in ((x.shape[-1], out_hw[1]), (x.shape[-2], out_hw[0])):
        need = (target - 1) * stride + kernel - 2 * pad  # input side giving `target` outputs
        extra.extend((0, max(0, need - size)))
    return F.pad(x, extra) if any(extra) else x


def branch_scores(
    model: nn.Module, src: str, x: torch.Tensor, out_hw: tuple[int, int]
) -> torch.Tensor:
    """Run branch ``src`` of ``model`` on its source blob ``x``; scores of size ``out_hw``."""
    names = branch_layer_names(src)
    h = _pad_to_grid(x, getattr(model, names[0]), out_hw)
    for name in names:
        h = getattr(model, name)(h)
    return h[..., : out_hw[0], : out_hw[1]]
