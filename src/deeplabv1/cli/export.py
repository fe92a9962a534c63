"""`deeplabv1 export`: the network (raw score-map output) to ONNX."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Export the network of a checkpoint to ONNX: input (B, 3, H, W) float32 Caffe input (BGR, 0-255,
minus the ImageNet mean) -> scores (B, C, h, w) on the stride-8 grid. The x8 zoom, argmax and
the dense CRF are not in the graph: run them after it in Python (deeplabv1.crf.deeplab_crf on
the zoomed scores).
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="export the network to ONNX", description=DESCRIPTION)
    p.add_argument("--weights", required=True, metavar="MODEL.pt", help="deeplabv1 checkpoint")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="ONNX file to write")
    p.add_argument("--input-size", type=int, default=513, help="square example input")
    p.add_argument("--dynamic", action="store_true", help="symbolic batch, height and width")
    p.add_argument("--opset", type=int, default=17,
                   help="ONNX opset version (7 up to the newest the installed torch exports)")
    p.add_argument(
        "--check",
        action="store_true",
        help="compare onnxruntime with PyTorch on a random input (needs onnxruntime)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing file deeplabv1 did not write"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from deeplabv1.checkpoint import model_from_checkpoint
    from deeplabv1.io import check_outputs, output_rules
    from deeplabv1.predict.export import (
        check_export_settings,
        export_onnx,
        require_onnx,
        run_onnx,
    )

    check_export_settings(args.input_size, args.opset)  # before the checkpoint is read
    require_onnx(check=args.check)
    with output_rules([args.weights], overwrite=args.overwrite, command="export"):
        check_outputs([args.onnx])
        model = model_from_checkpoint(args.weights).eval()
        path = export_onnx(
            model, args.onnx, input_size=args.input_size, dynamic=args.dynamic, opset=args.opset
        )
    print(f"deeplabv1 export: wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    if args.check:
        x = (
            torch.randn(
                1, 3, args.input_size, args.input_size, generator=torch.Generator().manual_seed(0)
            )
            * 60
        )
        with torch.no_grad():
            want = model(x).numpy()
        got = run_onnx(path, x.numpy())
        err = float(np.abs(got - want).max())
        scale = float(np.abs(want).max()) or 1.0
        print(
            f"deeplabv1 export: onnxruntime vs PyTorch max abs difference {err:.3g} "
            f"(max |score| {scale:.3g})"
        )
        return 0 if err <= 1e-4 * max(1.0, scale) else 1
    return 0
