"""ImageNet VGG16 -> DeepLab initialisation, as pure ``state_dict -> state_dict`` functions.

Two steps, usable separately:

1. ``vgg16_from_torchvision``: torchvision's layout (``features.N.*``, ``classifier.N.*``) ->
   Caffe layer names (``conv1_1`` .. ``conv5_3``, ``fc6``, ``fc7``), fc6 reshaped to a
   convolution (4096 x 512 x 7 x 7), fc7 to 4096 x 4096 x 1 x 1, and torchvision's input
   convention (RGB / 255, normalised by mean/std) folded into conv1_1 so that the weights take
   Caffe input (BGR, 0-255, minus ``MEAN_BGR``). ImageNet's fc8 (classifier.6) is dropped.
2. ``deeplab_init_from_vgg16``: Caffe-named VGG16 weights -> the state dict of a DeepLab variant,
   whose shapes come from a template (the state dict of the freshly built model):

   - fc6 decimated spatially to the variant's kernel: 7x7 keeps every tap, 4x4 keeps taps
     {0, 2, 4, 6}, 3x3 keeps taps {0, 3, 6} (rows and columns alike);
   - when the variant has fewer fc6/fc7 filters (LargeFOV: 1,024 of 4,096), a random subset is
     kept: ``torch.Generator().manual_seed(seed)`` draws ``randperm(n)[:k]`` (sorted) first for
     the fc6 filters, then for the fc7 filters; fc7 keeps the input channels matching the kept
     fc6 filters, so fc6 outputs and fc7 inputs stay consistent;
   - fc8 is fresh, as released: N(0, 0.01) drawn from the same generator after the subsets,
     bias 0, ``num_classes`` outputs;
   - every other template entry (the MSc branches) keeps the model's own initialisation.

The conv1_1 folding is exact except on the one-pixel zero-padding ring of conv1_1: Caffe pads
with the mean colour (``MEAN_BGR``), torchvision with its normalised zero (the ImageNet mean
0.485/0.456/0.406 x 255); the two colours differ by less than one grey level.
"""

from __future__ import annotations

import torch

from deeplabv1.data.caffe_input import MEAN_BGR
from deeplabv1.errors import DeepLabError

# torchvision vgg16 "features" indices of the 13 convolutions, in order
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_CONV_NAMES = (
    "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3",
)  # fmt: skip
TORCHVISION_NAMES = {f"features.{i}": n for i, n in zip(TORCHVISION_CONV_INDICES, VGG16_CONV_NAMES)}
TORCHVISION_NAMES.update({"classifier.0": "fc6", "classifier.3": "fc7"})
TORCHVISION_IGNORED = ("classifier.6.weight", "classifier.6.bias")  # ImageNet's 1000-way fc8

TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)

# fc6 taps kept by spatial decimation of VGG's 7x7 fc6, per target kernel size
FC6_TAPS = {7: (0, 1, 2, 3, 4, 5, 6), 4: (0, 2, 4, 6), 3: (0, 3, 6)}
FC8_STD = 0.01


def fold_torchvision_input(
    weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """conv1_1 for torchvision input -> conv1_1 for Caffe input (same response, exactly).

    torchvision feeds ``(rgb / 255 - m) / s``; Caffe feeds ``c = bgr - MEAN_BGR``, so
    ``rgb[k] = c[2 - k] + MEAN_RGB[k]`` and the layer becomes ``W'[:, 2 - k] = W[:, k] / (255 s_k)``
    with bias ``b + sum_k (MEAN_RGB[k] - 255 m_k) / (255 s_k) * sum(W[:, k])``.
    """
    w = weight.double()
    mean_rgb = torch.tensor(MEAN_BGR[::-1], dtype=torch.float64)
    m = torch.tensor(TORCHVISION_MEAN_RGB, dtype=torch.float64)
    s = torch.tensor(TORCHVISION_STD_RGB, dtype=torch.float64)
    scale = 1.0 / (255.0 * s)  # per RGB input channel
    w_rgb = w * scale.view(1, 3, 1, 1)
    shift = (mean_rgb - 255.0 * m) * scale
    new_bias = bias.double() + (w * shift.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    return w_rgb.flip(1).to(weight.dtype).contiguous(), new_bias.to(bias.dtype)


def vgg16_from_torchvision(state: dict[str, torch.Tensor], source: str = "state dict") -> dict:
    """torchvision VGG16 state dict -> Caffe-named VGG16 weights taking Caffe input (step 1)."""
    expected = {f"{k}.{p}" for k in TORCHVISION_NAMES for p in ("weight", "bias")}
    missing = sorted(expected - set(state))
    unknown = sorted(set(state) - expected - set(TORCHVISION_IGNORED))
    if missing or unknown:
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unexpected {', '.join(unknown[:8])}"] if unknown else []
        raise DeepLabError(f"{source}: not a torchvision VGG16 state dict ({'; '.join(parts)})")
    out = {}
    for tv_name, name in TORCHVISION_NAMES.items():
        out[f"{name}.weight"] = state[f"{tv_name}.weight"].float()
        out[f"{name}.bias"] = state[f"{tv_name}.bias"].float()
    c5 = out["conv5_3.weight"].shape[0]
    fc6, fc7 = out["fc6.weight"], out["fc7.weight"]
    if fc6.dim() != 2 or fc6.shape[1] != c5 * 49 or fc7.dim() != 2 or fc7.shape[1] != fc6.shape[0]:
        raise DeepLabError(f"{source}: classifier shapes {tuple(fc6.shape)}, {tuple(fc7.shape)} "
                           f"do not fit VGG16 with {c5} conv5_3 channels (expect N x {c5 * 49})")
    out["fc6.weight"] = fc6.reshape(fc6.shape[0], c5, 7, 7)
    out["fc7.weight"] = fc7.reshape(fc7.shape[0], fc7.shape[1], 1, 1)
    out["conv1_1.weight"], out["conv1_1.bias"] = fold_torchvision_input(
        out["conv1_1.weight"], out["conv1_1.bias"]
    )
    return out


def decimate_fc6(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    """VGG's 7x7 fc6 (O, C, 7, 7) -> (O, C, k, k) keeping ``FC6_TAPS[k]`` rows and columns."""
    if weight.shape[-2:] != (7, 7):
        raise DeepLabError(f"fc6 must be 7x7 to decimate, got {tuple(weight.shape[-2:])}")
    if kernel not in FC6_TAPS:
        raise DeepLabError(f"no decimation rule for a {kernel}x{kernel} fc6 (have 7, 4, 3)")
    taps = torch.tensor(FC6_TAPS[kernel])
    return weight.index_select(2, taps).index_select(3, taps).contiguous()


def choose_channels(total: int, keep: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of ``keep`` of ``total`` channels: all of them, or a seeded random subset."""
    if keep > total:
        raise DeepLabError(f"cannot keep {keep} of {total} channels")
    if keep == total:
        return torch.arange(total)
    return torch.randperm(total, generator=generator)[:keep].sort().values


def deeplab_init_from_vgg16(
    vgg: dict[str, torch.Tensor],
    template: dict[str, torch.Tensor],
    *,
    seed: int = 0,
    source: str = "VGG16 weights",
) -> tuple[dict[str, torch.Tensor], dict]:
    """Caffe-named VGG16 (fc6 as 7x7 conv) -> a DeepLab state dict shaped like ``template``.

    Returns the state dict and a record of the choices (seed, taps, kept channel indices) that
    is stored in the checkpoint's ``source`` entry.
    """
    for key in ("fc6.weight", "fc7.weight", "fc8.weight", "fc8.bias"):
        if key not in template:
            raise DeepLabError(f"the target model has no {key}: not a DeepLab V1 network")
    out = {k: v.clone() for k, v in template.items()}
    gen = torch.Generator().manual_seed(int(seed))
    o6, _, k6, _ = template["fc6.weight"].shape
    o7 = template["fc7.weight"].shape[0]
    try:
        keep6 = choose_channels(vgg["fc6.weight"].shape[0], o6, gen)
        keep7 = choose_channels(vgg["fc7.weight"].shape[0], o7, gen)
    except DeepLabError as exc:
        raise DeepLabError(f"{source}: does not fit the model (width or variant?): fc6/fc7 "
                           f"{exc}") from None
    fc6 = decimate_fc6(vgg["fc6.weight"], k6)
    converted = {name: (vgg[f"{name}.weight"], vgg[f"{name}.bias"]) for name in VGG16_CONV_NAMES}
    converted["fc6"] = (fc6[keep6], vgg["fc6.bias"][keep6])
    converted["fc7"] = (vgg["fc7.weight"][keep7][:, keep6], vgg["fc7.bias"][keep7])
    problems = []
    for name, (w, b) in converted.items():
        for key, value in ((f"{name}.weight", w), (f"{name}.bias", b)):
            want = template.get(key)
            if want is None:
                problems.append(f"{key} not in the model")
            elif tuple(want.shape) != tuple(value.shape):
                problems.append(f"{key} {tuple(value.shape)} != model {tuple(want.shape)}")
            else:
                out[key] = value.to(want.dtype).contiguous()
    if problems:
        raise DeepLabError(f"{source}: does not fit the model (width or variant?): "
                           + "; ".join(problems))
    num_classes = template["fc8.weight"].shape[0]
    out["fc8.weight"] = torch.randn(num_classes, o7, 1, 1, generator=gen) * FC8_STD
    out["fc8.bias"] = torch.zeros(num_classes)
    record = {
        "seed": int(seed),
        "fc6_taps": list(FC6_TAPS[k6]),
        "fc6_channels": keep6.tolist(),
        "fc7_channels": keep7.tolist(),
        "fc8_init": f"normal(0, {FC8_STD}), bias 0",
    }
    return out, record


def torchvision_to_deeplab(
    state: dict[str, torch.Tensor],
    template: dict[str, torch.Tensor],
    *,
    seed: int = 0,
    source: str = "state dict",
) -> tuple[dict[str, torch.Tensor], dict]:
    """torchvision VGG16 state dict -> DeepLab state dict (both steps); see the module doc."""
    vgg = vgg16_from_torchvision(state, source)
    return deeplab_init_from_vgg16(vgg, template, seed=seed, source=source)
