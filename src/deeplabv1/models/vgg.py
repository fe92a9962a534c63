"""The VGG16 trunk of DeepLab V1, built from a cfg list as in torchvision's ``make_layers``.

Two trunks exist:

- ``"2x2"``: the released DeepLab trunk. pool1-3 max 2x2 stride 2 pad 1; pool4 max 2x2 stride 1
  with pad 0 in the released *train* prototxt and pad 1 in the *test* prototxt (``pool4_pad``).
- ``"3x3"``: the LargeFOV / MSc trunk. pool1-3 max 3x3 stride 2 pad 1; pool4 max 3x3 stride 1 pad 1.

Both: conv5_1..conv5_3 are 3x3 with dilation 2 (Caffe "hole" 2) and pad 2; pool5 is max 3x3
stride 1 pad 1. Every max pool is ceil-mode, which in PyTorch also drops a last window that would
start inside the padding, exactly as Caffe does.

Layers are returned as ``(name, module)`` pairs with Caffe names (``conv1_1``, ``relu1_1``,
``pool1``, ...) so the model can register them flat and its state-dict keys are the Caffe ones.
"""

from __future__ import annotations

from torch import nn

from deeplabv1.errors import DeepLabError

# VGG16 (torchvision's cfg "D"): channels per conv, "M" = a max pool.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip

TRUNKS = ("2x2", "3x3")


def scaled(channels: int, width: float) -> int:
    """Channel count scaled by the ``width`` multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


def pool_specs(trunk: str, pool4_pad: int | None = None) -> list[tuple[int, int, int]]:
    """(kernel, stride, padding) of pool1..pool5 for a trunk (see the module docstring)."""
    if trunk == "2x2":
        pad4 = 0 if pool4_pad is None else int(pool4_pad)
        if pad4 not in (0, 1):
            raise DeepLabError(f"pool4_pad must be 0 (train prototxt) or 1 (test), got {pad4}")
        return [(2, 2, 1), (2, 2, 1), (2, 2, 1), (2, 1, pad4), (3, 1, 1)]
    if trunk == "3x3":
        if pool4_pad not in (None, 1):
            raise DeepLabError("pool4_pad is a setting of the 2x2-pool trunk only (3x3 uses 1)")
        return [(3, 2, 1), (3, 2, 1), (3, 2, 1), (3, 1, 1), (3, 1, 1)]
    raise DeepLabError(f"unknown trunk {trunk!r}; expected one of {', '.join(TRUNKS)}")


def make_trunk(
    trunk: str = "3x3",
    *,
    width: float = 1.0,
    pool4_pad: int | None = None,
    cfg: tuple[int | str, ...] = VGG16_CFG,
) -> tuple[list[tuple[str, nn.Module]], int]:
    """Build conv1_1 .. pool5 as ``(name, module)`` pairs; returns them and the output channels.

    ``width`` scales every channel count (1.0 = VGG16). conv5_x use dilation 2 (atrous), the
    change that keeps the stride at 8 after pool4 and pool5 lose their subsampling.
    """
    pools = pool_specs(trunk, pool4_pad)
    layers: list[tuple[str, nn.Module]] = []
    in_ch, block, index = 3, 1, 1
    for item in cfg:
        if item == "M":
            kernel, stride, pad = pools[block - 1]
            layers.append(
                (f"pool{block}", nn.MaxPool2d(kernel, stride, padding=pad, ceil_mode=True))
            )
            block, index = block + 1, 1
            continue
        out_ch = scaled(int(item), width)
        dilation = 2 if block == 5 else 1
        conv = nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation)
        layers.append((f"conv{block}_{index}", conv))
        layers.append((f"relu{block}_{index}", nn.ReLU(inplace=True)))
        in_ch, index = out_ch, index + 1
    return layers, in_ch
