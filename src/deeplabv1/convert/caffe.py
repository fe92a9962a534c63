"""Caffe models (parsed by :mod:`deeplabv1.convert.caffe_proto`) -> this project's state dicts.

Layer names map by identity: the model's modules carry the Caffe layer names (``conv1_1`` ..
``fc8`` and the MSc branch layers), ``blobs[0]`` is the weight and ``blobs[1]`` the bias. Two
extras: ``renames`` ({caffe name: our name}) for models whose names differ, and the released
DeepLab convention of naming the classifier after the data set (``fc8_voc12``, ``fc8_pascal``):
when the file has no ``fc8`` and exactly one ``fc8_*`` layer that is not one of our own layers,
it is taken as ``fc8``.

A blob fits a parameter when the shapes agree up to leading axes of size 1 (Caffe's legacy
4-D num/channels/height/width blobs: a bias is 1x1x1xN), or when the parameter is a convolution
(O, I, kh, kw) and the blob is an InnerProduct matrix (O, I*kh*kw), which is reshaped. Every
shape is checked; missing, extra and mismatched layers are reported by name. Caffe models already
take Caffe input (BGR, 0-255, minus the mean): nothing is folded.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from deeplabv1.convert.caffe_proto import CaffeLayer
from deeplabv1.convert.torchvision_vgg import VGG16_CONV_NAMES
from deeplabv1.errors import DeepLabError


def _strip(shape) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


def fit_blob(blob: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The blob reshaped to ``shape`` if it fits (see the module doc), else None."""
    shape = tuple(shape)
    if blob.size != math.prod(shape):
        return None
    accepted = {_strip(shape)}
    if len(shape) == 4:
        accepted.add(_strip((shape[0], math.prod(shape[1:]))))  # InnerProduct as a conv
    if tuple(blob.shape) == shape or _strip(blob.shape) in accepted:
        return torch.from_numpy(np.ascontiguousarray(blob, dtype=np.float32)).reshape(shape)
    return None


def weighted_layers(layers: list[CaffeLayer], source: str) -> dict[str, list[np.ndarray]]:
    """{layer name: blobs} for the layers that carry weights; duplicate names are an error."""
    out: dict[str, list[np.ndarray]] = {}
    for layer in layers:
        if not layer.blobs:
            continue
        if layer.name in out:
            raise DeepLabError(f"{source}: two layers named {layer.name!r} carry weights")
        out[layer.name] = layer.blobs
    return out


def resolve_names(
    weighted: dict[str, list[np.ndarray]],
    our_layers: set[str] | frozenset[str] = frozenset(),
    renames: dict[str, str] | None = None,
    source: str = "caffemodel",
) -> dict[str, list[np.ndarray]]:
    """Apply ``renames`` and the ``fc8_<dataset>`` convention: {our name: blobs}."""
    renames = dict(renames or {})
    unknown = sorted(set(renames) - set(weighted))
    if unknown:
        raise DeepLabError(f"{source}: --rename names layers the file lacks: {', '.join(unknown)}"
                           f"; it has {', '.join(weighted)}")
    out = {renames.get(name, name): blobs for name, blobs in weighted.items()}
    if len(out) != len(weighted):
        raise DeepLabError(f"{source}: renaming made two layers share a name")
    if "fc8" not in out:
        candidates = [n for n in out if n.startswith("fc8_") and n not in our_layers]
        if len(candidates) == 1:
            out["fc8"] = out.pop(candidates[0])
    return out


def infer_shapes(
    named: dict[str, list[np.ndarray]], source: str = "caffemodel"
) -> dict[str, float | int]:
    """``width`` (conv1_1 filters / 64) and ``num_classes`` (fc8 filters) where the file says."""
    found: dict[str, float | int] = {}
    for layer, key in (("conv1_1", "width"), ("fc8", "num_classes")):
        if not named.get(layer):
            continue
        weight = named[layer][0]
        if weight.ndim == 0 or weight.size == 0:  # no filters to count (and an empty blob may
            raise DeepLabError(f"{source}: {layer} weight has shape {weight.shape}, no filters")
        filters = _strip(weight.shape)[0]  # declare any shape)
        found[key] = filters / 64.0 if key == "width" else filters
    return found


def caffe_to_deeplab(
    named: dict[str, list[np.ndarray]],
    template: dict[str, torch.Tensor],
    *,
    source: str = "caffemodel",
    strict: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Fill a copy of ``template`` from resolved Caffe blobs ({our layer name: blobs}).

    Returns the state dict and a report {"loaded", "missing", "extra", "mismatched"} of layer
    names. With ``strict`` any missing, extra or mismatched layer raises ``DeepLabError``;
    otherwise missing and mismatched layers keep the template's values and extra ones are skipped.
    """
    params: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, value in template.items():
        layer, _, kind = key.rpartition(".")
        params.setdefault(layer, {})[kind] = tuple(value.shape)
    out = {k: v.clone() for k, v in template.items()}
    report: dict[str, list[str]] = {"loaded": [], "missing": [], "extra": [], "mismatched": []}
    for layer, kinds in params.items():
        if layer not in named:
            report["missing"].append(layer)
            continue
        blobs = named[layer]
        wanted = [k for k in ("weight", "bias") if k in kinds]
        problem = None
        if len(blobs) != len(wanted):
            problem = f"{layer}: {len(blobs)} blobs, the model has {len(wanted)} parameters"
        else:
            fitted = {}
            for kind, blob in zip(wanted, blobs):
                tensor = fit_blob(blob, kinds[kind])
                if tensor is None:
                    problem = f"{layer}.{kind}: file {tuple(blob.shape)} != model {kinds[kind]}"
                    break
                fitted[f"{layer}.{kind}"] = tensor
        if problem:
            report["mismatched"].append(problem)
            continue
        out.update({k: v.to(template[k].dtype) for k, v in fitted.items()})
        report["loaded"].append(layer)
    report["extra"] = sorted(set(named) - set(params))
    bad = [f"{kind}: {', '.join(report[kind])}" for kind in ("missing", "extra", "mismatched")
           if report[kind]]
    if strict and bad:
        raise DeepLabError(f"{source}: does not match the model ({'; '.join(bad)})")
    if not report["loaded"]:
        raise DeepLabError(f"{source}: no layer of the file matches the model")
    return out, report


def vgg16_from_caffe(
    named: dict[str, list[np.ndarray]], source: str = "caffemodel"
) -> dict[str, torch.Tensor]:
    """ImageNet VGG16 from Caffe (VGG_ILSVRC_16_layers) -> Caffe-named VGG16, fc6 as 7x7 conv.

    The input convention is already Caffe's (BGR, 0-255, mean subtracted): nothing is folded.
    """
    missing = [n for n in (*VGG16_CONV_NAMES, "fc6", "fc7") if len(named.get(n, ())) != 2]
    if missing:
        raise DeepLabError(f"{source}: not a VGG16 model (no weight and bias for "
                           f"{', '.join(missing)})")
    out = {}
    for name in (*VGG16_CONV_NAMES, "fc6", "fc7"):
        weight, bias = named[name]
        if weight.ndim == 0 or weight.size == 0:
            raise DeepLabError(f"{source}: {name} weight has shape {weight.shape}, no filters")
        out[f"{name}.weight"] = torch.from_numpy(np.array(weight, np.float32))
        out[f"{name}.bias"] = torch.from_numpy(np.array(bias, np.float32)).reshape(-1)
    c5 = out["conv5_3.weight"].shape[0]
    for name, shape in (("fc6", (-1, c5, 7, 7)), ("fc7", (-1, out["fc6.bias"].numel(), 1, 1))):
        w = out[f"{name}.weight"]
        target = (out[f"{name}.bias"].numel(), *shape[1:])
        fitted = fit_blob(w.numpy(), target)
        if fitted is None:
            raise DeepLabError(f"{source}: {name} weight {tuple(w.shape)} does not fit {target}")
        out[f"{name}.weight"] = fitted
    return out
