"""Run a network (or saved score maps) over a split with the paper's test procedure.

Per image, the released test procedure: the Caffe input padded bottom/right to ``test_size``
(the dataset's ``TestTransform``) and then to the side of the variant's test network, the test
network's scores (``deeplabv1.models.inference``: DeepLab's pool4 pad 1, MSc's dense branches),
bilinear align-corners zoom x8, the release's crop (DeepLab 7 pixels), cut to the image, then
argmax ("network") and/or the dense CRF on those scores followed by argmax ("crf").
One confusion matrix per method is accumulated over the split (``metrics``), optionally the
trimap bands (``trimap``). The coarse scores can be saved (``scores``) so that the CRF can be
rerun, or cross-validated, without the network.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from deeplabv1.data.palette import save_label_png
from deeplabv1.evaluate.metrics import ConfusionAccumulator, summarize
from deeplabv1.evaluate.scores import full_scores, load_scores, save_scores
from deeplabv1.evaluate.trimap import TrimapAccumulator, void_distance


def network_scores(
    model: torch.nn.Module,
    dataset,
    indices: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    workers: int = 0,
    save_dir: str | os.PathLike | None = None,
    score_dtype: str = "float32",
    compress: bool = False,
) -> Iterator[tuple[str, torch.Tensor, np.ndarray, np.ndarray]]:
    """Yield (id, full-resolution scores (C,H,W), rgb (H,W,3) uint8, labels (H,W)) per image.

    Test items come padded to the test size; the test network gives the coarse scores (with
    their zoom factor and crop), which are saved to ``save_dir`` if given, then zoomed and
    cropped to the image. MSc's dense test network sums at full resolution: its maps are saved
    at full size (factor 1), cut to the image.
    """
    from deeplabv1.models.inference import input_side_for, run_test_network

    subset = torch.utils.data.Subset(dataset, list(indices))
    loader = torch.utils.data.DataLoader(
        subset, batch_size=batch_size, num_workers=workers, collate_fn=list
    )
    model.eval()
    for items in loader:
        images = torch.stack([it["image"] for it in items]).to(device)
        height, width = images.shape[-2:]
        pad_h = input_side_for(model, height) - height
        pad_w = input_side_for(model, width) - width
        images = torch.nn.functional.pad(images, (0, pad_w, 0, pad_h))  # 0 = the mean colour
        with torch.inference_mode():
            coarse, factor, crop = run_test_network(model, images)
            coarse = coarse.float()
        for it, c in zip(items, coarse):
            h, w = int(it["height"]), int(it["width"])
            c_crop = crop
            if factor == 1:  # already full size: keep only the image's pixels
                c, c_crop = c[:, crop : crop + h, crop : crop + w], 0
            if save_dir is not None:
                save_scores(save_dir, it["id"], c, h, w, factor=factor, crop=c_crop,
                            dtype=score_dtype, compress=compress)  # fmt: skip
            rgb = np.asarray(it["rgb"], dtype=np.uint8)
            yield it["id"], full_scores(c, h, w, factor, c_crop), rgb, np.asarray(it["label"])


def saved_scores(
    scores_dir: str | os.PathLike, dataset, indices: Sequence[int], device="cpu"
) -> Iterator[tuple[str, torch.Tensor, np.ndarray, np.ndarray]]:
    """Like ``network_scores`` but from a folder of saved score maps (no network)."""
    for i in indices:
        image_id = dataset.ids[i]
        rgb, labels = dataset.load(i)
        coarse, h, w, factor, crop = load_scores(scores_dir, image_id)
        if (h, w) != labels.shape:
            from deeplabv1.errors import DeepLabError

            raise DeepLabError(
                f"{Path(scores_dir) / image_id}.npz: scores are for a {w}x{h} image, "
                f"the dataset's image is {labels.shape[1]}x{labels.shape[0]}"
            )
        full = full_scores(torch.from_numpy(coarse).to(device), h, w, factor, crop)
        yield image_id, full, rgb, labels


def run_crf(
    scores: torch.Tensor,
    rgb: np.ndarray,
    params,
    iters: int = 10,
    normalization: str = "after",
    method: str = "lattice",
) -> np.ndarray:
    """Dense-CRF labels (H, W) int64 numpy from full-resolution scores (C, H, W).

    ``method`` is the message-passing filter: "lattice" (permutohedral, O(N)) or "dense"
    (exact O(N^2), tiny images only).
    """
    from deeplabv1.crf import deeplab_crf

    probs = deeplab_crf(
        scores, rgb, params=params, iters=iters, normalization=normalization, method=method
    )
    return probs.argmax(0).cpu().numpy()


def evaluate_stream(
    stream,
    *,
    num_images: int,
    num_classes: int,
    class_names: Sequence[str],
    crf_params=None,
    crf_iters: int = 10,
    crf_normalization: str = "after",
    crf_method: str = "lattice",
    network: bool = True,
    trimap_max_width: int | None = None,
    predictions_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict:
    """Score every image of ``stream`` (from ``network_scores`` or ``saved_scores``).

    Methods: ``network`` (argmax of the scores) when ``network`` is true, and ``crf`` when
    ``crf_params`` is given. Returns a dict with per-method ``summarize`` results, the trimap
    curves (``trimap_max_width``), the number of images and timings. Predictions are written as
    palette PNGs to ``predictions_dir/<method>/<id>.png`` when a folder is given.
    """
    methods = (["network"] if network else []) + (["crf"] if crf_params is not None else [])
    conf = {m: ConfusionAccumulator(num_classes) for m in methods}
    tri = {m: TrimapAccumulator(num_classes, trimap_max_width) for m in methods if trimap_max_width}
    seconds = {"scores": 0.0, "crf": 0.0}
    count = 0
    it = iter(stream)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=num_images, desc="eval", unit="img")
    t_prev = time.perf_counter()
    for image_id, scores, rgb, labels in it:
        seconds["scores"] += time.perf_counter() - t_prev
        labels = np.asarray(labels)
        preds = {}
        if network:
            preds["network"] = scores.argmax(0).cpu().numpy()
        if crf_params is not None:
            t0 = time.perf_counter()
            preds["crf"] = run_crf(
                scores, rgb, crf_params, crf_iters, crf_normalization, crf_method
            )
            seconds["crf"] += time.perf_counter() - t0
        dist = void_distance(labels) if trimap_max_width else None
        for m, pred in preds.items():
            conf[m].update(pred, labels)
            if trimap_max_width:
                tri[m].update(pred, labels, dist)
            if predictions_dir is not None:
                save_label_png(Path(predictions_dir) / m / f"{image_id}.png", pred)
        count += 1
        t_prev = time.perf_counter()
    out: dict = {"num_images": count, "methods": {}}
    for m in methods:
        out["methods"][m] = summarize(conf[m].matrix, list(class_names))
    if trimap_max_width:
        out["trimap"] = {"widths": tri[methods[0]].widths() if methods else []}
        for m in methods:
            out["trimap"][m] = tri[m].mean_iou_curve()
    per = max(count, 1)
    out["timing"] = {
        "seconds_per_image_scores": round(seconds["scores"] / per, 4),
        "seconds_per_image_crf": round(seconds["crf"] / per, 4) if crf_params else None,
    }
    return out


def evaluate(
    dataset,
    *,
    model: torch.nn.Module | None = None,
    scores_dir: str | os.PathLike | None = None,
    num_images: int | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    workers: int = 0,
    save_scores_dir: str | os.PathLike | None = None,
    score_dtype: str = "float32",
    compress: bool = False,
    class_names: Sequence[str] | None = None,
    **options,
) -> dict:
    """Evaluate ``model`` (or the score maps in ``scores_dir``) on the first ``num_images``.

    ``options`` go to ``evaluate_stream`` (crf_params, crf_iters, crf_normalization, crf_method,
    network,
    trimap_max_width, predictions_dir, progress).
    """
    from deeplabv1.errors import DeepLabError

    if (model is None) == (scores_dir is None):
        raise DeepLabError("evaluate: give exactly one of a model or a folder of saved scores")
    n = len(dataset) if num_images is None else min(num_images, len(dataset))
    indices = range(n)
    if model is not None:
        num_classes = int(model.num_classes)
        stream = network_scores(
            model, dataset, indices, device=device, batch_size=batch_size, workers=workers,
            save_dir=save_scores_dir, score_dtype=score_dtype, compress=compress,
        )  # fmt: skip
    else:
        num_classes = int(dataset.num_classes)
        stream = saved_scores(scores_dir, dataset, indices, device=device)
    if class_names is None:
        from deeplabv1.data.palette import VOC_CLASSES

        class_names = (
            VOC_CLASSES if num_classes == len(VOC_CLASSES) else
            [f"class{i}" for i in range(num_classes)]
        )  # fmt: skip
    return evaluate_stream(
        stream, num_images=n, num_classes=num_classes, class_names=class_names, **options
    )
