"""Export the network (raw fc8 score map) to ONNX.

The graph maps ``input`` (B, 3, H, W) float32 Caffe input (BGR, 0-255, minus the mean; pad
bottom/right with 0 as ``Segmenter`` does) to ``scores`` (B, C, h, w), the stride-8 score map.
Upsampling, argmax and the dense CRF are not part of the graph: run them after it in Python
(``deeplabv1.models.inference.zoom_scores`` and ``deeplabv1.crf.deeplab_crf``).

onnx and onnxruntime are an optional extra (``pip install deeplabv1[onnx]``); the export itself
needs only torch's TorchScript-based exporter (``dynamo=False``: no onnxscript dependency).
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from deeplabv1.errors import DeepLabError
from deeplabv1.io import atomic_path

OPSET = 17
MIN_OPSET = 7  # the oldest opset torch's exporter writes and onnxruntime supports
INPUT_NAME, OUTPUT_NAME = "input", "scores"


def max_opset() -> int:
    """The newest opset the installed torch's exporter writes."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):  # a torch without the constant: its value in 2.13
        return 23


def check_export_settings(input_size: int, opset: int) -> None:
    """DeepLabError naming the flag when ``input_size`` or ``opset`` cannot be exported."""
    if input_size < 1:
        raise DeepLabError(f"--input-size must be positive, got {input_size}")
    if not MIN_OPSET <= opset <= max_opset():
        raise DeepLabError(f"--opset must lie in {MIN_OPSET}..{max_opset()} (the ONNX opsets "
                           f"the installed torch exports), got {opset}")  # fmt: skip


def require_onnx(check: bool = False) -> None:
    """DeepLabError unless ``onnx`` (and, with ``check``, ``onnxruntime``) can be imported."""
    for name in ("onnx", "onnxruntime") if check else ("onnx",):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise DeepLabError(f"{name} is not installed (the optional onnx extra): "
                               "pip install 'deeplabv1[onnx]'") from exc  # fmt: skip


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    input_size: int = 513,
    dynamic: bool = False,
    opset: int = OPSET,
) -> Path:
    """Write ``model`` (eval mode, CPU) to ``path`` as ONNX, atomically.

    The traced example input is 1 x 3 x ``input_size`` x ``input_size``; with ``dynamic`` the
    batch, height and width axes are symbolic, otherwise the graph accepts only that shape.
    """
    check_export_settings(input_size, opset)
    require_onnx()  # torch's exporter needs it, and says so only in a long traceback
    path = Path(path)
    model = model.cpu().eval()
    example = torch.zeros(1, 3, input_size, input_size)
    axes = None
    if dynamic:
        axes = {
            INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            OUTPUT_NAME: {0: "batch", 2: "score_height", 3: "score_width"},
        }
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_axes=axes,
            dynamo=False,
        )
    return path


def run_onnx(path: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """Run an exported graph with onnxruntime (CPU) on (B, 3, H, W) float32 Caffe input."""
    require_onnx(check=True)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.asarray(images, np.float32)})[0]
