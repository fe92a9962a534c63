"""Make docs/figures/predict_voc_samples.png, the README's `deeplabv1 predict` example.

No VOC-trained weights exist in this project's environment (none can be downloaded), so the
figure is honest about what it shows: a reduced-width DeepLab-LargeFOV trained FROM SCRATCH on
seven VOC sample images with their masks only (overfit on purpose), saved with
``save_checkpoint`` and then run through the real ``Segmenter`` (network, then network + dense
CRF) and drawn with ``side_by_side``. It shows the pipeline and what the CRF does to the
stride-8 boundaries, not the accuracy of a VOC-trained model.

Why a short loop here instead of ``deeplabv1 train``: on this 2-core CPU the paper's SGD recipe
(lr 1e-3, from random init) sat at loss 1.5 (all background) after 30 iterations (175 s), so
overfitting would take hours. This loop uses the same pieces (the network, Caffe input,
``shrink_labels`` subsampling, cross-entropy ignoring 255) with Adam, no dropout, whole images at
half resolution (all seven in one batch, random mirror). Predictions are made at that same half
resolution. About 20 minutes on 2 busy cores:

    .venv/bin/python docs/figures/make_predict_figure.py [--iters 300] [--width 0.0625]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO.parent / "shared" / "data" / "voc_samples"
ALL_IDS = ("2007_000033", "2007_000129", "2007_000332", "2007_000346", "2007_000847",
           "2007_001284", "2007_001288")  # fmt: skip
FIGURE = "predict_voc_samples.png"
ROWS = ("2007_000129", "2007_000033", "2007_000346", "2007_001288")  # figure rows


def load_half(sid: str) -> tuple[np.ndarray, np.ndarray]:
    """A sample image (bilinear) and its labels (nearest) at half resolution."""
    from PIL import Image

    img = Image.open(SAMPLES / f"{sid}.png").convert("RGB")
    size = (round(img.width / 2), round(img.height / 2))
    lab = Image.open(SAMPLES / f"{sid}_label.png").resize(size, Image.NEAREST)
    return np.asarray(img.resize(size, Image.BILINEAR)), np.asarray(lab)


def overfit(width: float, iters: int, lr: float, weights: Path, seed: int = 0):
    """Train a LargeFOV network on the seven half-resolution samples, saving it to ``weights``
    every 25 iterations and at the end (so a long run can be rendered early with --skip-train)."""
    import torch
    import torch.nn.functional as F

    from deeplabv1.checkpoint import save_checkpoint
    from deeplabv1.data.caffe_input import to_caffe_input
    from deeplabv1.models import build_model
    from deeplabv1.models.inference import shrink_labels

    torch.manual_seed(seed)
    size = 257  # every half-resolution sample fits; 8k + 1
    x = torch.zeros(len(ALL_IDS), 3, size, size)  # 0 = the mean colour in Caffe input
    y = torch.full((len(ALL_IDS), size, size), 255, dtype=torch.long)
    for i, sid in enumerate(ALL_IDS):
        rgb, lab = load_half(sid)
        h, w = lab.shape
        x[i, :, :h, :w] = to_caffe_input(rgb)
        y[i, :h, :w] = torch.from_numpy(lab.astype(np.int64))
    model = build_model("deeplab-largefov", width=width)
    model.drop6.p = model.drop7.p = 0.0  # memorising seven images: dropout only slows it down
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0 = time.perf_counter()
    for it in range(iters):
        xb, yb = (x.flip(-1), y.flip(-1)) if torch.rand(()) < 0.5 else (x, y)
        scores = model(xb)
        target = shrink_labels(yb)[:, : scores.shape[2], : scores.shape[3]]
        loss = F.cross_entropy(scores, target, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 25 == 0 or it == iters - 1:
            print(
                f"iter {it} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True
            )
            save_checkpoint(
                weights,
                model.state_dict(),
                arch=model.arch,
                num_classes=21,
                width=width,
                model_kwargs=model.model_kwargs,
                iteration=it + 1,
                source="docs/figures/make_predict_figure.py: overfit on 7 samples",
            )
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description="Make the README's predict figure.")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--width", type=float, default=0.0625)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weights", type=Path, default=REPO / "runs/readme_figure/overfit.pt")
    parser.add_argument("--figure", type=Path, default=Path(__file__).with_name(FIGURE))
    parser.add_argument("--skip-train", action="store_true", help="reuse --weights")
    args = parser.parse_args()

    from deeplabv1 import Segmenter
    from deeplabv1.checkpoint import load_checkpoint
    from deeplabv1.data.palette import colorize
    from deeplabv1.viz.figures import side_by_side

    if not args.skip_train:
        overfit(args.width, args.iters, args.lr, args.weights)
    iters = int(load_checkpoint(args.weights).get("iteration", args.iters))
    seg = Segmenter.from_checkpoint(args.weights, device="cpu")
    rows, classes = [], set()
    for sid in ROWS:
        rgb, gt = load_half(sid)
        res = seg.predict(rgb, crf=True)
        nets = [
            ("network", res.net_labels),
            ("network + CRF", res.crf_labels),
            ("ground truth", gt),
        ]
        rows.append([("image", rgb)] + [(title, colorize(lab)) for title, lab in nets])
        classes |= set(np.unique(gt).tolist()) | set(np.unique(res.crf_labels).tolist())
        agree = [(lab == gt).mean() * 100 for lab in (res.net_labels, res.crf_labels)]
        print(
            f"{sid}: pixels equal to ground truth: network {agree[0]:.1f}%, "
            f"network + CRF {agree[1]:.1f}%"
        )
    caption = (
        f"DeepLab-LargeFOV at width {seg.model.width:g} trained from scratch on these 7 images "
        f"only ({iters} iterations, half resolution):\noverfit, no VOC-trained weights here. "
        "CRF: the LargeFOV parameters."
    )
    side_by_side(rows, args.figure, classes=classes, caption=caption, panel_width=2.0, dpi=90)
    print(f"wrote {args.figure} ({args.figure.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
