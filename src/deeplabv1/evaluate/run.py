"""``deeplabv1 eval`` as a function: ``run_eval(EvalConfig)`` writes results into ``cfg.out``.

Outputs (all atomic): ``results.json`` and ``results.md`` (``report``), ``config.yaml`` (the
resolved settings), ``trimap.png`` with ``--trimap``, ``predictions/<method>/<id>.png`` with
``--save-predictions``, and the score folder of ``--save-scores`` (with its ``meta.json``).

Under torchrun (``deeplabv1.distributed``) every rank evaluates its shard of the images on its
own device and writes that shard's per-image outputs; rank 0 writes everything else, plus
``eval_summary.json`` (which images each rank processed, or skipped with ``--resume``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path

from deeplabv1.config import config_to_dict, save_config
from deeplabv1.errors import DeepLabError
from deeplabv1.evaluate.config import EvalConfig


def resolve_crf_params(cfg: EvalConfig, arch: str | None, checkpoint_crf=None):
    """The CRFParams to use: --crf-params name, else the checkpoint's, else the arch's
    per-variant defaults; then individual --w1/--sa/--sb/--w2/--sg overrides."""
    from deeplabv1.crf import get_params

    try:
        if cfg.crf_params is not None:
            params = get_params(cfg.crf_params)
        elif isinstance(checkpoint_crf, dict):  # crf-search values or learned end to end
            from deeplabv1.crf.torch.learned import crf_params_from_checkpoint

            params = crf_params_from_checkpoint(checkpoint_crf)
        elif isinstance(checkpoint_crf, str):
            params = get_params(checkpoint_crf)
        elif arch is not None:
            params = get_params(arch)
        else:
            raise ValueError("no variant known: pass --crf-params NAME or all of --w1 ... --sg")
        overrides = {k: getattr(cfg, k) for k in ("w1", "sa", "sb", "w2", "sg")}
        return dataclasses.replace(params, **{k: v for k, v in overrides.items() if v is not None})
    except (ValueError, KeyError, TypeError) as exc:
        raise DeepLabError(f"CRF parameters: {exc}") from exc


def eval_classes(stored, data_root, num_classes: int):
    """The classes an evaluation reports: the model's (a checkpoint's or a score folder's stored
    names), else the dataset's classes file, else the defaults. A classes file naming another
    number of classes than a model without stored names has is an error; a model that stores
    its names (``train --class-names`` overrides the classes file) gets a note (the masks'
    values are checked against its classes as they are read)."""
    from deeplabv1.data.classes import dataset_classes, default_classes
    from deeplabv1.data.layout import detect_layout

    found = dataset_classes(detect_layout(data_root)[1])
    named = stored is not None and stored.source != "default"
    if found is not None and found.num_classes != num_classes and not named:
        raise DeepLabError(f"{found.source}: names {found.num_classes} classes, the model "
                           f"predicts {num_classes}")  # fmt: skip
    if named:
        if found is not None and found.num_classes != num_classes:  # a likely mix-up
            print(f"note: {found.source} names {found.num_classes} classes, the model predicts "
                  f"{num_classes} ({', '.join(stored.names)}); the report uses the model's, and "
                  f"a mask value of {num_classes} or more is an error",
                  file=sys.stderr)  # fmt: skip
        elif found is not None and found.names != stored.names:
            print(f"note: {found.source} names other classes than the model; the report uses "
                  f"the model's ({', '.join(stored.names)})", file=sys.stderr)  # fmt: skip
        return stored
    return found if found is not None else default_classes(num_classes)


def test_network(model) -> str:
    """"release" when ``model`` runs its variant's released test network (``build_model``'s
    default: the same zooms, crop and input grid, and every layer that network changes at the
    same setting), else the model's builder settings that make it differ."""
    from torch.nn.modules.utils import _pair

    from deeplabv1.models import build_model

    release = build_model(model.arch, num_classes=1, width=1 / 64)
    mine, ref = model.test_net, release.test_net

    def setting(net, owner, name: str, key: str):
        return _pair(net.overrides.get(name, {}).get(key, getattr(getattr(owner, name), key)))

    same = (mine.zooms, mine.crop, mine.grid) == (ref.zooms, ref.crop, ref.grid) and all(
        setting(mine, model, name, key) == setting(ref, release, name, key)
        for name in {*mine.overrides, *ref.overrides}
        for key in {*mine.overrides.get(name, {}), *ref.overrides.get(name, {})}
    )
    if same:
        return "release"
    kwargs = getattr(model, "model_kwargs", {}) or {}
    return ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "other"


def prediction_setup(cfg: EvalConfig, params) -> dict:
    """What the per-image predictions depend on (checked before ``--resume`` reuses them)."""
    from deeplabv1.distributed.work import file_sha256

    source = {"weights_sha256": file_sha256(cfg.weights)} if cfg.weights else {}
    if cfg.scores is not None:
        source = {"scores": str(Path(cfg.scores).resolve())}
    return {**source, "data": str(Path(cfg.data).resolve()), "split": cfg.split,
            "label_dir": cfg.label_dir, "val_fraction": cfg.val_fraction,
            "test_size": cfg.test_size,
            "crf_params": dataclasses.asdict(params) if params is not None else None,
            "crf_iters": cfg.crf_iters, "crf_normalization": cfg.crf_normalization,
            "crf_method": cfg.crf_method, "save_scores": cfg.save_scores}  # fmt: skip


def run_eval(cfg: EvalConfig) -> dict:
    """``eval_in_group`` in torchrun's process group, if any (see the module doc), else alone.

    Under torchrun every rank returns the results of the whole split.
    """
    from deeplabv1.distributed.context import RANK_WAIT, distributed_session

    with distributed_session(cfg.device, RANK_WAIT) as dist:
        return eval_in_group(cfg, dist)


def _setup(cfg: EvalConfig, device):
    """The model (None with ``--scores``), its record, classes, dataset and CRF parameters."""
    from deeplabv1.checkpoint import checkpoint_classes, load_checkpoint, model_from_checkpoint
    from deeplabv1.data.classes import stored_classes
    from deeplabv1.data.datasets import open_dataset
    from deeplabv1.data.transforms import TestTransform
    from deeplabv1.distributed.work import file_sha256
    from deeplabv1.evaluate.scores import read_meta

    if cfg.data is None:
        raise DeepLabError("eval: --data DATASET is required (images/ + masks/ or VOC root)")
    if (cfg.weights is None) == (cfg.scores is None):
        raise DeepLabError("eval: give exactly one of --weights MODEL.pt or --scores DIR")
    if cfg.scores is not None and cfg.save_scores is not None:
        raise DeepLabError("eval: --save-scores makes no sense with --scores (no network runs)")
    if cfg.resume and not cfg.save_predictions:
        raise DeepLabError("eval: --resume reuses the per-image predictions of an interrupted "
                           "run; it needs --save-predictions")  # fmt: skip
    model = None
    ckpt_crf = None
    if cfg.weights is not None:
        ckpt = load_checkpoint(cfg.weights)
        model = model_from_checkpoint(ckpt).to(device)
        info = {"arch": ckpt["arch"], "width": ckpt["width"], "num_classes": ckpt["num_classes"],
                "weights": str(cfg.weights), "weights_sha256": file_sha256(cfg.weights),
                "test_network": test_network(model)}  # fmt: skip
        ckpt_crf = ckpt.get("crf")
        stored = checkpoint_classes(ckpt, str(cfg.weights))
    else:
        meta = read_meta(cfg.scores)
        keys = ("arch", "width", "num_classes", "weights", "weights_sha256", "test_network",
                "test_size")  # fmt: skip
        info = {k: meta.get(k) for k in keys}
        info["scores"] = str(cfg.scores)
        stored = stored_classes(meta.get("class_names"), meta.get("palette"),
                                int(info["num_classes"]), str(cfg.scores))  # fmt: skip
    num_classes = int(info["num_classes"])
    classes = eval_classes(stored, cfg.data, num_classes)
    info["class_names"] = list(classes.names)
    dataset = open_dataset(
        cfg.data,
        cfg.split,
        label_dir=cfg.label_dir,
        transform=TestTransform(cfg.test_size),
        num_classes=num_classes,
        val_fraction=cfg.val_fraction,
    )
    params = resolve_crf_params(cfg, info["arch"], ckpt_crf) if cfg.crf else None
    return model, info, classes, dataset, params


def eval_in_group(cfg: EvalConfig, dist) -> dict:
    """Evaluate as ``cfg`` says; write every output into ``cfg.out``; return the results."""
    from deeplabv1.data.layout import detect_layout
    from deeplabv1.distributed.work import on_every_rank
    from deeplabv1.evaluate.evaluator import evaluate
    from deeplabv1.evaluate.report import trimap_curves, write_results
    from deeplabv1.evaluate.scores import write_meta

    # an error here (a missing checkpoint, a bad dataset) is the same error on every rank
    model, info, classes, dataset, params = on_every_rank(lambda: _setup(cfg, dist.device),
                                                          dist, "eval")  # fmt: skip
    device = dist.device
    out = Path(cfg.out)
    if cfg.save_scores is not None and dist.is_main:
        write_meta(cfg.save_scores, {**info, "palette": classes.palette(),
                                     "test_size": cfg.test_size, "data": str(cfg.data),
                                     "split": cfg.split, "val_fraction": cfg.val_fraction,
                                     "kind": "coarse fc8 scores"})  # fmt: skip
    if cfg.save_predictions:
        from deeplabv1.distributed.work import record_setup

        record_setup(out / "predictions" / "setup.json", prediction_setup(cfg, params),
                     cfg.resume, dist)  # fmt: skip
    t0 = time.perf_counter()
    results = evaluate(
        dataset, model=model, scores_dir=cfg.scores, num_images=cfg.num_images, device=device,
        batch_size=cfg.batch_size, workers=cfg.workers, save_scores_dir=cfg.save_scores,
        score_dtype=cfg.score_dtype, compress=cfg.compress, class_names=classes.names,
        crf_params=params, crf_iters=cfg.crf_iters, crf_normalization=cfg.crf_normalization,
        crf_method=cfg.crf_method, crf_device=cfg.crf_device, crf_batch_size=cfg.crf_batch_size,
        trimap_max_width=cfg.trimap_max_width if cfg.trimap else None,
        predictions_dir=out / "predictions" if cfg.save_predictions else None,
        progress=cfg.progress, dist=dist, resume=cfg.resume,
    )  # fmt: skip
    summary = results.pop("summary")
    results["timing"]["total_seconds"] = round(time.perf_counter() - t0, 2)
    results = {
        "model": info,
        "data": {"root": str(cfg.data), "layout": detect_layout(cfg.data)[0], "split": cfg.split,
                 "val_fraction": cfg.val_fraction, "num_images": results["num_images"]},
        "crf_params": dataclasses.asdict(params) if params is not None else None,
        "crf_iters": cfg.crf_iters,
        "crf_normalization": cfg.crf_normalization,
        "config": config_to_dict(cfg),
        **results,
    }
    if not dist.is_main:
        return results
    save_config(cfg, out / "config.yaml")
    write_results(out, results)
    if dist.distributed or cfg.resume:
        from deeplabv1.distributed.work import write_summary

        write_summary(out / "eval_summary.json", summary, dist)
    if cfg.trimap:
        plot_trimap_safe(trimap_curves(results), out / "trimap.png")
    return results


def plot_trimap_safe(curves: dict, path: Path) -> Path | None:
    """``deeplabv1.viz.plots.plot_trimap`` (Fig. 5 style), skipped with a note if absent."""
    try:
        from deeplabv1.viz.plots import plot_trimap
    except ImportError as exc:  # the plotting helpers are another module; results stand alone
        print(f"note: trimap plot skipped ({exc})")
        return None
    return plot_trimap(curves, path, title="Trimap: mean IoU near object boundaries")


def run_crf_search(cfg) -> dict:
    """``deeplabv1 crf-search`` as a function: search, then write best.json, search.md and
    config.yaml into ``cfg.out`` (points.jsonl grows as points finish).

    Under torchrun the ranks share out the points of every round (on the CPU, gloo); rank 0
    writes the outputs and every rank returns the same search.
    """
    from deeplabv1.distributed.context import DistInfo, distributed_session, env_world_size
    from deeplabv1.evaluate.crf_search import crf_search, saved_tuning
    from deeplabv1.evaluate.report import write_search

    cfg.validate()
    if cfg.method == "dense":  # exact filtering is torch's: say so before any output
        from deeplabv1.crf import require_torch

        require_torch("crf-search --method dense")
    if cfg.image_dir is not None or cfg.scores_dir is not None:  # any model's score folders
        from deeplabv1.evaluate.tuning import folder_tuning

        tuning = folder_tuning(cfg)
    else:
        from deeplabv1.data.datasets import open_dataset
        from deeplabv1.evaluate.scores import read_meta

        if cfg.scores is None or cfg.data is None:
            raise DeepLabError("crf-search: give --scores DIR and --data DATASET (saved score "
                               "maps), or --image-dir, --scores-dir and --label-dir")  # fmt: skip
        num_classes = int(read_meta(cfg.scores)["num_classes"])
        dataset = open_dataset(cfg.data, cfg.split, label_dir=cfg.label_dir,
                               num_classes=num_classes, val_fraction=cfg.val_fraction)  # fmt: skip
        tuning = saved_tuning(cfg, dataset, num_classes)
    # one process needs no process group (and no torch: the folder search runs without it)
    alone = env_world_size() <= 1
    with contextlib.nullcontext(DistInfo()) if alone else distributed_session("cpu") as dist:
        search = crf_search(cfg, tuning, dist=dist)  # config.yaml once the images are read
        if dist.is_main:
            write_search(cfg.out, search)
    return search
