"""The project's checkpoint format: one documented dict, written atomically, read safely.

Keys (``load_checkpoint`` checks the required ones):

- ``format``: ``"deeplabv1"`` and ``format_version``: 1
- ``arch``: a name from ``deeplabv1.models.MODEL_NAMES`` (``"deeplab-largefov"``, ...)
- ``num_classes``: int; ``width``: channel multiplier (1.0 = the paper)
- ``model_kwargs``: extra builder arguments (e.g. ``{"pool4_pad": 1}``)
- ``model``: the network's ``state_dict`` (Caffe layer names)
- ``config``: the resolved config of the command that wrote it (a plain dict)
- optional: ``class_names`` (list of ``num_classes`` names) and ``palette`` (``num_classes``
  ``[r, g, b]`` colours): the classes the model predicts, used by eval tables, predict legends
  and overlays and ``Segmenter``; without them (older files) ``checkpoint_classes`` gives VOC's
  names for 21 classes and ``class0``, ``class1``, ... otherwise, with the VOCdevkit colours
- optional: ``crf`` (CRF parameters to use with this model), ``optimizer``, ``scheduler``,
  ``iteration``, ``rng`` (training state for exact resume), ``source`` (where weights came from)
- ``file``: added by ``load_checkpoint`` (the path it read, for messages); never saved

Files are read with ``torch.load(weights_only=True)``: no pickle code ever runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from deeplabv1.data.classes import stored_classes
from deeplabv1.errors import DeepLabError
from deeplabv1.io import atomic_torch_save, regular_file

FORMAT = "deeplabv1"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("arch", "num_classes", "model")


def save_checkpoint(
    path: str | os.PathLike,
    model_state: dict[str, torch.Tensor],
    *,
    arch: str,
    num_classes: int,
    width: float = 1.0,
    model_kwargs: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
    palette: list | None = None,
    **extra: Any,
) -> None:
    """Write a checkpoint dict (see module docstring) atomically to ``path``."""
    if class_names is not None or palette is not None:
        classes = stored_classes(class_names, palette, int(num_classes), f"{path}")
        extra["class_names"], extra["palette"] = list(classes.names), classes.palette()
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "num_classes": int(num_classes),
        "width": float(width),
        "model_kwargs": dict(model_kwargs or {}),
        "model": {k: v.detach().cpu() for k, v in model_state.items()},
        "config": dict(config or {}),
    }
    ckpt.update(extra)
    ckpt.pop("file", None)  # where a loaded checkpoint came from, not part of the format
    atomic_torch_save(path, ckpt)


def _not_torch_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` is no torch.save file (a zip archive, or a pickle in the legacy format),
    or None when it looks like one."""
    import zipfile

    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if head.startswith(b"PK\x03\x04"):
                return None if zipfile.is_zipfile(f) else "the file is damaged or cut short"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if not head:
        return "the file is empty"
    return None if head.startswith(b"\x80") else "not a PyTorch file"


def load_weights_only(
    path: str | os.PathLike, what: str, map_location: str | torch.device = "cpu"
) -> Any:
    """``torch.load(path, weights_only=True)``; a file it refuses or cannot read is one line
    naming ``path`` and saying it is not a ``what`` (never torch's advice to load it unsafely)."""
    import pickle
    import re
    import warnings

    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": nothing to act on
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        found = re.search(r"Unsupported global: (\S+ \S+)", str(exc))
        if isinstance(exc, pickle.UnpicklingError) and found is not None:
            raise DeepLabError(
                f"{path}: refused, not a {what}: loading it would run pickle code "
                f"({found[1]}) beyond tensors and plain data"
            ) from None
        why = _not_torch_file(path)
        if why is not None:
            pass
        elif isinstance(exc, pickle.UnpicklingError):
            why = ("pickled content other than tensors and plain data, refused (none of it was "
                   "run)")  # fmt: skip
        elif isinstance(exc, EOFError):
            why = "the file is cut short"
        else:
            first = (str(exc).strip().splitlines() or [""])[0]
            why = f"unreadable ({type(exc).__name__}{': ' + first[:160] if first else ''})"
        raise DeepLabError(f"{path}: not a {what}: {why}") from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read and validate a checkpoint; errors name the file and what is wrong."""
    path = Path(path)
    regular_file(path, "checkpoint file")  # a FIFO would be waited on forever
    ckpt = load_weights_only(path, "deeplabv1 checkpoint", map_location)
    if not isinstance(ckpt, dict):
        raise DeepLabError(f"{path}: expected a checkpoint dict, found {type(ckpt).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        hint = ""
        if all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            hint = " (this looks like a bare state_dict: convert it with `deeplabv1 convert`)"
        raise DeepLabError(f"{path}: checkpoint lacks {', '.join(missing)}{hint}")
    if ckpt.get("format", FORMAT) != FORMAT:
        raise DeepLabError(f"{path}: unknown checkpoint format {ckpt.get('format')!r}")
    ckpt.setdefault("width", 1.0)
    ckpt.setdefault("model_kwargs", {})
    ckpt.setdefault("config", {})
    _check_model_fields(ckpt, path)
    checkpoint_classes(ckpt, str(path))  # malformed names or palette: an error naming the file
    ckpt["file"] = str(path)
    return ckpt


def _check_model_fields(ckpt: dict, path: Path) -> None:
    """The network description (arch, width, model_kwargs) is one the builders take; errors
    name the file."""
    import math

    from deeplabv1.models import MODEL_NAMES

    arch, width = ckpt["arch"], ckpt["width"]
    if not isinstance(arch, str) or arch not in MODEL_NAMES:
        raise DeepLabError(f"{path}: unknown arch {arch!r} (known: {', '.join(MODEL_NAMES)})")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not (
            math.isfinite(width) and width > 0):  # fmt: skip
        raise DeepLabError(f"{path}: width must be a number > 0, got {width!r}")
    if not isinstance(ckpt["model_kwargs"], dict):
        raise DeepLabError(f"{path}: model_kwargs must be a mapping, got "
                           f"{type(ckpt['model_kwargs']).__name__}")  # fmt: skip


def checkpoint_classes(ckpt: dict, where: str = "checkpoint"):
    """The ``ClassInfo`` (names, colours) of a loaded checkpoint; defaults when it stores none
    (``deeplabv1.data.classes.default_classes``)."""
    try:
        num_classes = int(ckpt["num_classes"])
    except (TypeError, ValueError) as exc:
        msg = f"{where}: num_classes {ckpt['num_classes']!r} is not a number"
        raise DeepLabError(msg) from exc
    return stored_classes(ckpt.get("class_names"), ckpt.get("palette"), num_classes, where)


def nonfinite_weights(state: dict[str, Any]) -> list[str]:
    """The names of the floating-point tensors of ``state`` that hold NaN or infinite values."""
    return [name for name, value in state.items()
            if torch.is_tensor(value) and value.is_floating_point()
            and not bool(torch.isfinite(value).all())]  # fmt: skip


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Raise DeepLabError naming ``source`` and the tensors that hold NaN or infinite values
    (a diverged run or a corrupt file: such a network predicts nothing useful)."""
    bad = nonfinite_weights(state)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DeepLabError(f"{source}: weights hold NaN or infinite values ({shown}): a diverged "
                           "or corrupt model")  # fmt: skip


def weight_misfit(source: str, model: torch.nn.Module, name: str, weight: Any,
                  needed: torch.Tensor) -> DeepLabError:  # fmt: skip
    """The error naming ``source`` for ``weight`` (None: absent) that does not fit ``model``'s
    weight ``name`` (``needed``)."""
    net = f"{model.arch} (width {model.width})"
    if weight is None:
        return DeepLabError(f"{source}: lacks weight {name} of {net}")
    if not torch.is_tensor(weight):
        return DeepLabError(f"{source}: weight {name} is a {type(weight).__name__}, not a tensor")
    return DeepLabError(f"{source}: weight {name} has shape {tuple(weight.shape)}, {net} needs "
                        f"{tuple(needed.shape)}")  # fmt: skip


def check_weights_fit(model: torch.nn.Module, state: dict, source: str) -> None:
    """DeepLabError naming ``source`` and the first weight of ``state`` that does not fit
    ``model``: absent, of another shape, or one the network does not have."""
    own = model.state_dict()
    for name, needed in own.items():
        weight = state.get(name)
        if not torch.is_tensor(weight) or weight.shape != needed.shape:
            raise weight_misfit(source, model, name, weight, needed)
    extra = [name for name in state if name not in own]
    if extra:
        raise DeepLabError(f"{source}: holds weight {extra[0]}, which {model.arch} "
                           f"(width {model.width}) does not have")  # fmt: skip


def model_from_checkpoint(
    ckpt: dict | str | os.PathLike, map_location: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Build the network a checkpoint describes and load its weights (strictly); the model's
    ``class_names`` and ``palette`` attributes are the checkpoint's (``checkpoint_classes``)."""
    from deeplabv1.models import build_model

    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt, map_location=map_location)
    source = ckpt.get("file", "checkpoint")
    try:
        model = build_model(ckpt["arch"], num_classes=ckpt["num_classes"], width=ckpt["width"],
                            **ckpt["model_kwargs"])  # fmt: skip
    except (DeepLabError, TypeError) as exc:  # e.g. a model_kwargs key no builder takes
        raise DeepLabError(f"{source}: {exc}") from None
    check_finite(ckpt["model"], source)
    check_weights_fit(model, ckpt["model"], source)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        raise DeepLabError(f"{source}: weights do not fit {ckpt['arch']}: {exc}") from exc
    classes = checkpoint_classes(ckpt, source)
    model.class_names, model.palette = list(classes.names), classes.palette()
    return model
