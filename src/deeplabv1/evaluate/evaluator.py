"""Run a network (or saved score maps) over a split with the paper's test procedure.

Per image, the released test procedure: the Caffe input padded bottom/right to ``test_size``
(the dataset's ``TestTransform``) and then to the side of the variant's test network, the test
network's scores (``deeplabv1.models.inference``: DeepLab's pool4 pad 1, MSc's dense branches),
bilinear align-corners zoom x8, the release's crop (DeepLab 7 pixels), cut to the image, then
argmax ("network") and/or the dense CRF on those scores followed by argmax ("crf").
One confusion matrix per method is accumulated over the split (``metrics``), optionally the
trimap bands (``trimap``). The coarse scores can be saved (``scores``) so that the CRF can be
rerun, or cross-validated, without the network.

Under torchrun each rank scores its shard of the images (``deeplabv1.distributed.shard``) and
the integer counts are summed over the ranks, so the results equal a single process's exactly.
With ``resume``, images whose per-image predictions are all on disk are scored from those
files instead of being recomputed.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from deeplabv1.data.palette import read_label_png, save_label_png
from deeplabv1.errors import DeepLabError
from deeplabv1.evaluate.accumulator import EvalAccumulator
from deeplabv1.evaluate.scores import full_scores, load_scores, save_scores

if TYPE_CHECKING:
    from deeplabv1.distributed.context import DistInfo


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

    Test items come padded to the test size (a side longer than that to itself: the dataset's
    ``TestTransform``) and are padded further to the side the variant's test network is made
    for, as ``predict`` and ``Segmenter`` do. Items of one padded size share a forward pass.
    The test network gives the coarse scores (with their zoom factor and crop), which are
    saved to ``save_dir`` if given, then zoomed and cropped to the image. MSc's dense test
    network sums at full resolution: its maps are saved at full size (factor 1), cut to the
    image. An image the network cannot run on (out of memory, say) stops the run with a
    DeepLabError naming its file.
    """
    from deeplabv1.models.inference import input_side_for, run_test_network

    indices = list(indices)
    subset = torch.utils.data.Subset(dataset, indices)
    loader = torch.utils.data.DataLoader(
        subset, batch_size=batch_size, num_workers=workers, collate_fn=list
    )
    batches = (zip(indices[k * batch_size :], items) for k, items in enumerate(loader))
    for batch in batches:
        for _, group in itertools.groupby(batch, key=lambda pair: pair[1]["image"].shape):
            group = list(group)
            items = [it for _, it in group]
            images = torch.stack([it["image"] for it in items]).to(device)
            height, width = images.shape[-2:]
            pad_h = input_side_for(model, height) - height
            pad_w = input_side_for(model, width) - width
            images = torch.nn.functional.pad(images, (0, pad_w, 0, pad_h))  # 0 = the mean colour
            try:
                with torch.inference_mode():
                    coarse, factor, crop = run_test_network(model, images)
                    coarse = coarse.float()
            except (RuntimeError, MemoryError, DeepLabError) as exc:
                files = ", ".join(str(_image_file(dataset, i)) for i, _ in group)
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise DeepLabError(f"{files}: cannot run the network on a {width}x{height} "
                                   f"input ({reason})") from exc  # fmt: skip
            yield from _image_scores(items, coarse, factor, crop, save_dir, score_dtype, compress)


def _image_file(dataset, index: int):
    """The image file of item ``index`` for a message (its id if the dataset has no files)."""
    try:
        return dataset.image_path(index)
    except Exception:  # no image_path, or the file went missing: the id still names it
        return dataset.ids[index]


def _image_scores(items, coarse, factor, crop, save_dir, score_dtype, compress):
    """``network_scores``' per-image outputs of one forward pass (and the saved scores)."""
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


def score_stream(
    stream,
    acc: EvalAccumulator,
    *,
    crf=None,
    network: bool = True,
    predictions_dir: str | os.PathLike | None = None,
    progress: bool = False,
    num_images: int | None = None,
    on_done=None,
) -> float:
    """Predict and score every image of ``stream`` into ``acc``; returns the seconds spent
    waiting for the stream (the network or the score files).

    ``crf`` is a ``CRFRunner`` (or None); images may finish out of order when it batches.
    Predictions go to ``predictions_dir/<method>/<id>.png``; ``on_done(id)`` follows each image.
    """
    pending: dict[int, tuple[str, dict, np.ndarray]] = {}  # by position: ids may repeat

    def finish(image_id: str, preds: dict, labels: np.ndarray) -> None:
        acc.add(preds, labels)
        if predictions_dir is not None:
            for m, pred in preds.items():
                save_label_png(Path(predictions_dir) / m / f"{image_id}.png", pred)
        if on_done is not None:
            on_done(image_id)

    def finish_crf(done: list) -> None:
        for key, labels_crf in done:
            image_id, preds, labels = pending.pop(key)
            finish(image_id, {**preds, "crf": labels_crf}, labels)

    it = iter(stream)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=num_images, desc="eval", unit="img")
    waited = 0.0
    t_prev = time.perf_counter()
    for position, (image_id, scores, rgb, labels) in enumerate(it):
        waited += time.perf_counter() - t_prev
        labels = np.asarray(labels)
        preds = {"network": scores.argmax(0).cpu().numpy()} if network else {}
        if crf is None:
            finish(image_id, preds, labels)
        else:
            pending[position] = (image_id, preds, labels)
            finish_crf(crf.submit(position, scores, rgb))
        t_prev = time.perf_counter()
    if crf is not None:
        finish_crf(crf.flush())
    return waited


def _timing(scores_s: float, crf_s: float | None, count: int) -> dict:
    per = max(count, 1)
    return {
        "seconds_per_image_scores": round(scores_s / per, 4),
        "seconds_per_image_crf": round(crf_s / per, 4) if crf_s is not None else None,
    }


def prepare_scoring(
    num_classes: int,
    *,
    crf_params=None,
    crf_iters: int = 10,
    crf_normalization: str = "after",
    crf_method: str = "lattice",
    crf_device: str = "auto",
    crf_batch_size: int | None = None,
    network: bool = True,
    trimap_max_width: int | None = None,
    predictions_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> tuple[EvalAccumulator, object, dict]:
    """The scoring options as (accumulator, ``CRFRunner`` or None, ``score_stream`` options).

    Methods: ``network`` (argmax of the scores) when ``network`` is true, and ``crf`` when
    ``crf_params`` is given (run on ``crf_device``, ``crf_batch_size`` images a call).
    """
    from deeplabv1.evaluate.crf_runner import CRFRunner

    methods = (["network"] if network else []) + (["crf"] if crf_params is not None else [])
    crf = None
    if crf_params is not None:
        crf = CRFRunner(crf_params, crf_iters, crf_normalization, crf_method,
                        device=crf_device, batch_size=crf_batch_size)  # fmt: skip
    options = {"crf": crf, "network": network, "predictions_dir": predictions_dir,
               "progress": progress}  # fmt: skip
    return EvalAccumulator(methods, num_classes, trimap_max_width), crf, options


def evaluate_stream(
    stream, *, num_images: int, num_classes: int, class_names: Sequence[str], **options
) -> dict:
    """Score every image of ``stream`` (from ``network_scores`` or ``saved_scores``).

    ``options`` are those of ``prepare_scoring`` (crf_params, crf_iters, crf_normalization,
    crf_method, crf_device, crf_batch_size, network, trimap_max_width, predictions_dir,
    progress). Returns a dict with per-method ``summarize`` results, the trimap curves
    (``trimap_max_width``), the number of images and timings. Predictions are written as
    palette PNGs to ``predictions_dir/<method>/<id>.png`` when a folder is given.
    """
    acc, crf, stream_options = prepare_scoring(num_classes, **options)
    done: list[str] = []
    waited = score_stream(stream, acc, num_images=num_images, on_done=done.append,
                          **stream_options)  # fmt: skip
    out: dict = {"num_images": len(done), **acc.results(class_names)}
    out["timing"] = _timing(waited, crf.seconds if crf else None, len(done))
    return out


def saved_predictions(predictions_dir, methods: Sequence[str], image_id: str) -> list[Path]:
    """The prediction PNG of every method for one image."""
    return [Path(predictions_dir) / m / f"{image_id}.png" for m in methods]


def score_saved_predictions(acc: EvalAccumulator, dataset, index: int, predictions_dir) -> None:
    """Add image ``index`` to ``acc`` from its prediction PNGs (a resumed run's finished
    images: the PNGs hold the labels exactly)."""
    labels = dataset.load(index)[1]
    pngs = saved_predictions(predictions_dir, acc.methods, dataset.ids[index])
    acc.add({m: read_label_png(p, acc.num_classes) for m, p in zip(acc.methods, pngs)}, labels)


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
    dist: DistInfo | None = None,
    resume: bool = False,
    **options,
) -> dict:
    """Evaluate ``model`` (or the score maps in ``scores_dir``) on the first ``num_images``.

    Under torchrun (``dist``) this rank evaluates its shard of the images (sorted by id) and
    the counts are summed over the ranks: every rank returns the results of the whole set.
    With ``resume``, images whose prediction PNGs (every method) and saved scores (with
    ``save_scores_dir``) exist are scored from the PNGs, not recomputed. The result's
    ``"summary"`` is the merged ``WorkSummary`` (processed / skipped / failed by id).
    ``options`` go to ``prepare_scoring`` (the CRF, trimap and prediction settings).
    """
    from deeplabv1.distributed.context import DistInfo, all_reduce_arrays
    from deeplabv1.distributed.shard import shard
    from deeplabv1.distributed.work import (
        WorkSummary,
        check_all,
        gather_summaries,
        split_complete,
    )

    if (model is None) == (scores_dir is None):
        raise DeepLabError("evaluate: give exactly one of a model or a folder of saved scores")
    dist = dist if dist is not None else DistInfo(device=torch.device(device))
    n = len(dataset) if num_images is None else min(num_images, len(dataset))
    num_classes = int(model.num_classes) if model is not None else int(dataset.num_classes)
    if class_names is None:
        from deeplabv1.data.palette import VOC_CLASSES

        class_names = (
            VOC_CLASSES if num_classes == len(VOC_CLASSES) else
            [f"class{i}" for i in range(num_classes)]
        )  # fmt: skip
    acc, crf, stream_options = prepare_scoring(num_classes, **options)
    methods, predictions_dir = acc.methods, stream_options["predictions_dir"]
    indices = list(range(n))
    if dist.distributed:
        indices = shard(indices, dist.rank, dist.world_size, key=lambda i: dataset.ids[i])
    reused: list[int] = []
    if resume and predictions_dir is not None:

        def outputs(i: int) -> list[Path]:
            paths = saved_predictions(predictions_dir, methods, dataset.ids[i])
            if save_scores_dir is not None:
                paths.append(Path(save_scores_dir) / f"{dataset.ids[i]}.npz")
            return paths

        indices, reused = split_complete(indices, outputs)
    summary = WorkSummary(rank=dist.rank)
    t0 = time.perf_counter()
    waited, error = 0.0, None
    try:
        for i in reused:
            score_saved_predictions(acc, dataset, i, predictions_dir)
            summary.skipped.append(dataset.ids[i])
        if model is not None:
            stream = network_scores(
                model, dataset, indices, device=dist.device, batch_size=batch_size,
                workers=workers, save_dir=save_scores_dir, score_dtype=score_dtype,
                compress=compress,
            )  # fmt: skip
        else:
            stream = saved_scores(scores_dir, dataset, indices, device=dist.device)
        stream_options["progress"] = stream_options["progress"] and dist.is_main
        waited = score_stream(stream, acc, num_images=len(indices),
                              on_done=summary.processed.append, **stream_options)  # fmt: skip
    except Exception as exc:
        if not dist.distributed:
            raise
        # tell the other ranks instead of leaving them waiting in the sums below
        if not isinstance(exc, DeepLabError):
            import traceback

            traceback.print_exc()
        error = f"rank {dist.rank}: {exc if isinstance(exc, DeepLabError) else repr(exc)}"
    summary.seconds = time.perf_counter() - t0
    check_all(error, dist, "eval")
    merged = gather_summaries(summary, dist)
    acc.set_arrays(all_reduce_arrays(acc.arrays(), dist))
    crf_s = crf.seconds if crf is not None else 0.0
    seconds = all_reduce_arrays({"s": np.array([waited, crf_s])}, dist)["s"]
    count = merged["counts"]["processed"]
    out: dict = {"num_images": count + merged["counts"]["skipped"], **acc.results(class_names)}
    out["timing"] = _timing(float(seconds[0]), float(seconds[1]) if crf else None, count)
    out["summary"] = merged
    return out
