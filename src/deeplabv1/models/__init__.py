"""The DeepLab V1 network family: one plain builder function per variant.

>>> from deeplabv1.models import build_model, deeplab_largefov
>>> net = deeplab_largefov(num_classes=21)          # the released LargeFOV geometry
>>> net = build_model("deeplab-msc", width=0.125)   # same architecture, 1/8 of the channels

Every builder takes keyword-only ``num_classes`` (default 21) and ``width`` (channel multiplier,
1.0 = the paper) and returns a :class:`~deeplabv1.models.deeplab.DeepLabV1`. ``build_model``
maps the CLI names of ``MODEL_NAMES`` to the builders. See docs/models.md for every assumption.
"""

from __future__ import annotations

from collections.abc import Callable

try:
    from torch import nn
except ModuleNotFoundError as exc:  # the torch-free (CRF only) install
    raise ModuleNotFoundError(
        'deeplabv1.models needs PyTorch, which is not installed: pip install "deeplabv1[torch]"',
        name="torch",
    ) from exc

from deeplabv1.errors import DeepLabError
from deeplabv1.models.deeplab import DeepLabV1, build_deeplab

MODEL_NAMES = (
    "deeplab",
    "deeplab-7x7",
    "deeplab-4x4",
    "deeplab-largefov",
    "deeplab-msc",
    "deeplab-msc-largefov",
)


def deeplab(
    *, num_classes: int = 21, width: float = 1.0, pool4_pad: int = 0, test_pool4_pad: int = 1
) -> DeepLabV1:
    """DeepLab (released): 2x2-pool trunk, fc6 4x4 dilation 4, 4096 ch.

    ``pool4_pad`` 0 is the released train prototxt (306 -> 39, the default: the geometry the
    released weights were trained with); 1 is the released test prototxt (306 -> 41).
    ``test_pool4_pad`` is pool4's padding in the test network (1 as released: 514 -> 67 cells,
    zoom x8, crop 7; 0 keeps the training geometry), see :mod:`deeplabv1.models.test_net`.
    """
    return build_deeplab(
        "deeplab", num_classes=num_classes, width=width, trunk="2x2", pool4_pad=pool4_pad,
        fc6_kernel=4, fc6_dilation=4, fc6_channels=4096, test_pool4_pad=test_pool4_pad,
        model_kwargs={"pool4_pad": int(pool4_pad), "test_pool4_pad": int(test_pool4_pad)},
    )  # fmt: skip


def deeplab_7x7(
    *, num_classes: int = 21, width: float = 1.0, trunk: str = "3x3", pool4_pad: int | None = None,
    test_pool4_pad: int | None = None,
) -> DeepLabV1:  # fmt: skip
    """DeepLab-7x7 (not released): fc6 7x7 dilation 4, 4096 ch; 3x3-pool trunk by default.

    With ``trunk="2x2"`` the test network is DeepLab's (``test_pool4_pad`` 1 unless set).
    """
    return build_deeplab(
        "deeplab-7x7", num_classes=num_classes, width=width, trunk=trunk, pool4_pad=pool4_pad,
        fc6_kernel=7, fc6_dilation=4, fc6_channels=4096, test_pool4_pad=test_pool4_pad,
        model_kwargs={"trunk": trunk, "pool4_pad": pool4_pad, "test_pool4_pad": test_pool4_pad},
    )  # fmt: skip


def deeplab_4x4(
    *, num_classes: int = 21, width: float = 1.0, trunk: str = "3x3", pool4_pad: int | None = None,
    test_pool4_pad: int | None = None,
) -> DeepLabV1:  # fmt: skip
    """DeepLab-4x4 (not released): fc6 4x4 dilation 8, 4096 ch; 3x3-pool trunk by default.

    With ``trunk="2x2"`` the test network is DeepLab's (``test_pool4_pad`` 1 unless set).
    """
    return build_deeplab(
        "deeplab-4x4", num_classes=num_classes, width=width, trunk=trunk, pool4_pad=pool4_pad,
        fc6_kernel=4, fc6_dilation=8, fc6_channels=4096, test_pool4_pad=test_pool4_pad,
        model_kwargs={"trunk": trunk, "pool4_pad": pool4_pad, "test_pool4_pad": test_pool4_pad},
    )  # fmt: skip


def deeplab_largefov(
    *, num_classes: int = 21, width: float = 1.0, pool5a: bool = True
) -> DeepLabV1:
    """DeepLab-LargeFOV (released): 3x3-pool trunk + pool5a, fc6 3x3 dilation 12, 1024 ch."""
    return build_deeplab(
        "deeplab-largefov", num_classes=num_classes, width=width, trunk="3x3", pool4_pad=None,
        fc6_kernel=3, fc6_dilation=12, fc6_channels=1024, pool5a=pool5a,
        model_kwargs={"pool5a": bool(pool5a)},
    )  # fmt: skip


def deeplab_msc(
    *, num_classes: int = 21, width: float = 1.0, msc_init: str = "release", msc_test: str = "dense"
) -> DeepLabV1:
    """DeepLab-MSc (released): 3x3-pool trunk, fc6 4x4 dilation 4, 4096 ch + 5 MLP branches.

    ``msc_init``: "release" (the released train prototxt's fillers) or "paper"; ``msc_test``:
    "dense" (the released test network) or "stride8" (the training forward, zoomed); see
    :mod:`deeplabv1.models.msc` and :mod:`deeplabv1.models.test_net`.
    """
    return build_deeplab(
        "deeplab-msc", num_classes=num_classes, width=width, trunk="3x3", pool4_pad=None,
        fc6_kernel=4, fc6_dilation=4, fc6_channels=4096, msc=True, msc_init=msc_init,
        msc_test=msc_test, model_kwargs={"msc_init": msc_init, "msc_test": msc_test},
    )  # fmt: skip


def deeplab_msc_largefov(
    *, num_classes: int = 21, width: float = 1.0, pool5a: bool = True, msc_init: str = "release",
    msc_test: str = "dense",
) -> DeepLabV1:  # fmt: skip
    """DeepLab-MSc-LargeFOV (released): LargeFOV + the 5 MLP branches of DeepLab-MSc."""
    return build_deeplab(
        "deeplab-msc-largefov", num_classes=num_classes, width=width, trunk="3x3",
        pool4_pad=None, fc6_kernel=3, fc6_dilation=12, fc6_channels=1024, pool5a=pool5a,
        msc=True, msc_init=msc_init, msc_test=msc_test,
        model_kwargs={"pool5a": bool(pool5a), "msc_init": msc_init, "msc_test": msc_test},
    )  # fmt: skip


BUILDERS: dict[str, Callable[..., DeepLabV1]] = {
    "deeplab": deeplab,
    "deeplab-7x7": deeplab_7x7,
    "deeplab-4x4": deeplab_4x4,
    "deeplab-largefov": deeplab_largefov,
    "deeplab-msc": deeplab_msc,
    "deeplab-msc-largefov": deeplab_msc_largefov,
}


def build_model(arch: str, *, num_classes: int = 21, width: float = 1.0, **kwargs) -> nn.Module:
    """Build the variant named ``arch`` (one of ``MODEL_NAMES``); kwargs go to its builder."""
    if arch not in BUILDERS:
        raise DeepLabError(f"unknown arch {arch!r}; choose one of {', '.join(MODEL_NAMES)}")
    try:
        return BUILDERS[arch](num_classes=num_classes, width=width, **kwargs)
    except TypeError as exc:  # an unknown builder setting, e.g. from a foreign checkpoint
        raise DeepLabError(f"{arch}: bad model setting ({exc})") from exc


__all__ = [
    "BUILDERS",
    "MODEL_NAMES",
    "DeepLabV1",
    "build_model",
    "deeplab",
    "deeplab_4x4",
    "deeplab_7x7",
    "deeplab_largefov",
    "deeplab_msc",
    "deeplab_msc_largefov",
]
