"""torch.hub entry points of deeplabv1: one per DeepLab V1 variant.

    import torch
    model = torch.hub.load("path/to/deeplabv1", "deeplab_largefov", source="local",
                           weights="model.pt")          # a path, file:// or http(s):// URL
    model = torch.hub.load("path/to/deeplabv1", "deeplab_msc", source="local", num_classes=5)
    model.eval()   # returned in training mode, as torchvision's models are

Every entry point takes ``weights`` (None: fresh weights, the trunk random), ``num_classes``,
``class_names``, ``width``, ``progress``, ``check_hash`` and the variant's builder settings;
see ``deeplabv1.hub.load``. The network carries ``class_names`` and ``palette``. The code comes
from this repository's ``src/`` (an installed deeplabv1 is used only if already imported).
"""

import sys
from pathlib import Path

# import names torch.hub checks before loading this file (see pyproject.toml for versions)
dependencies = ["torch", "numpy", "PIL"]

_SRC = Path(__file__).resolve().parent / "src"
if "deeplabv1" not in sys.modules and (_SRC / "deeplabv1").is_dir():
    sys.path.insert(0, str(_SRC))  # stays: the package imports some modules lazily

from deeplabv1.hub import load as _load  # noqa: E402


def deeplab(weights=None, num_classes=None, **kwargs):
    """DeepLab (released): 2x2-pool trunk, fc6 4x4 dilation 4; ``pool4_pad`` 0 (train) or 1."""
    return _load("deeplab", weights, num_classes=num_classes, **kwargs)


def deeplab_7x7(weights=None, num_classes=None, **kwargs):
    """DeepLab-7x7 (not released): fc6 7x7 dilation 4, 4096 channels."""
    return _load("deeplab-7x7", weights, num_classes=num_classes, **kwargs)


def deeplab_4x4(weights=None, num_classes=None, **kwargs):
    """DeepLab-4x4 (not released): fc6 4x4 dilation 8, 4096 channels."""
    return _load("deeplab-4x4", weights, num_classes=num_classes, **kwargs)


def deeplab_largefov(weights=None, num_classes=None, **kwargs):
    """DeepLab-LargeFOV (released): fc6 3x3 dilation 12, 1024 channels, pool5a."""
    return _load("deeplab-largefov", weights, num_classes=num_classes, **kwargs)


def deeplab_msc(weights=None, num_classes=None, **kwargs):
    """DeepLab-MSc (released): DeepLab plus five multi-scale MLP branches."""
    return _load("deeplab-msc", weights, num_classes=num_classes, **kwargs)


def deeplab_msc_largefov(weights=None, num_classes=None, **kwargs):
    """DeepLab-MSc-LargeFOV (released): DeepLab-LargeFOV plus the five MLP branches."""
    return _load("deeplab-msc-largefov", weights, num_classes=num_classes, **kwargs)
