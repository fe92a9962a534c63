"""Coarse-to-fine cross-validation of w1, sa, sb on saved score maps (the paper's method).

Round 0 evaluates the coarse grid (``CRFSearchConfig``: the paper's ranges by default). Each
refinement round halves the three steps and evaluates best + k * new_step, k = -2..2, per
parameter (so +- one old step around the best so far; values outside the grid's min..max are
dropped). A point is one full CRF run over the tuning images, scored by the mean IoU of one
confusion matrix over them.

Points run in parallel over processes (each worker loads the images once). Every finished point
is added to ``OUT/points.jsonl``, rewritten atomically, so an interrupted search loses at most
the points in flight; ``resume`` skips the points already there.

Under torchrun the ranks share out each round's points in waves (``world_size * jobs`` points,
split as ``deeplabv1.distributed.shard`` splits): every rank gets every record of a wave, in the
wave's order, so all ranks hold the same records as one process would, and rank 0 writes them.

The images come from saved score maps of a dataset (``saved_tuning``) or from plain image /
score / label folders (``deeplabv1.evaluate.tuning.folder_tuning``); before the grid, the
arg-max of the scores alone is scored once, and the result reports the best point's gain over
it.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from deeplabv1.data.palette import IGNORE_INDEX
from deeplabv1.errors import DeepLabError
from deeplabv1.evaluate.config import CRFSearchConfig
from deeplabv1.io import atomic_write_text

POINTS_NAME = "points.jsonl"
PARAM_NAMES = ("w1", "sa", "sb", "w2", "sg")
Point = tuple[float, float, float, float, float]


def _values(lo: float, hi: float, step: float) -> list[float]:
    if step <= 0 or hi < lo:
        raise DeepLabError(f"crf-search: bad range {lo}..{hi} step {step}")
    n = int(np.floor((hi - lo) / step + 1e-9)) + 1
    return [round(lo + k * step, 6) for k in range(n)]


def coarse_grid(cfg: CRFSearchConfig) -> list[Point]:
    """Every (w1, sa, sb, w2, sg) of the coarse grid, w1 slowest."""
    return [
        (w1, sa, sb, cfg.w2, cfg.sg)
        for w1 in _values(cfg.w1_min, cfg.w1_max, cfg.w1_step)
        for sa in _values(cfg.sa_min, cfg.sa_max, cfg.sa_step)
        for sb in _values(cfg.sb_min, cfg.sb_max, cfg.sb_step)
    ]


def grid_bounds(cfg: CRFSearchConfig) -> tuple[tuple[float, float], ...]:
    """The (min, max) of w1, sa, sb: refinement stays within them."""
    return tuple((getattr(cfg, f"{n}_min"), getattr(cfg, f"{n}_max")) for n in ("w1", "sa", "sb"))


def refine_grid(best: Point, steps: tuple[float, float, float],
                bounds: tuple[tuple[float, float], ...] | None = None) -> list[Point]:  # fmt: skip
    """best + k * step (k = -2..2) for w1, sa, sb; positive values only, and within ``bounds``
    ((min, max) per parameter, ``grid_bounds``) when given."""
    axes = [sorted({round(v + k * s, 6) for k in range(-2, 3)}) for v, s in zip(best[:3], steps)]
    limits = bounds or ((0.0, np.inf),) * 3
    axes = [[x for x in axis if x > 0 and lo - 1e-9 <= x <= hi + 1e-9]
            for axis, (lo, hi) in zip(axes, limits)]  # fmt: skip
    return [(a, b, c, best[3], best[4]) for a in axes[0] for b in axes[1] for c in axes[2]]


def point_key(point: Iterable[float]) -> Point:
    """Canonical, hashable form of a parameter point."""
    return tuple(round(float(v), 6) for v in point)  # type: ignore[return-value]


def best_record(records: Iterable[dict]) -> dict:
    """Highest mean IoU; ties go to the smallest (w1, sa, sb, w2, sg)."""
    recs = list(records)
    if not recs:
        raise DeepLabError("crf-search: no points evaluated")
    return min(recs, key=lambda r: (-r["mean_iou"], point_key(r[n] for n in PARAM_NAMES)))


def _differences(old, new: dict) -> str:
    """``key old -> new`` for each setting that differs (a missing one shows as None)."""
    old = old if isinstance(old, dict) else {}
    keys = [k for k in dict.fromkeys([*new, *old]) if old.get(k) != new.get(k)]
    shown = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:6])
    return shown + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")


def search_settings(cfg: CRFSearchConfig) -> dict:
    """The search's own settings that decide which points it evaluates and which is best (the
    grid, the fixed w2 and sg, the refinement rounds): part of the setup ``--resume`` checks."""
    names = ("w1_min", "w1_max", "w1_step", "sa_min", "sa_max", "sa_step", "sb_min", "sb_max",
             "sb_step", "w2", "sg", "refine_rounds")  # fmt: skip
    return {name: getattr(cfg, name) for name in names}


class PointsFile:
    """The search's results: one JSON line per point, the file rewritten atomically on add."""

    def __init__(self, path: Path, setup: dict, resume: bool):
        self.path = path
        self.setup = setup
        self.write = True  # False on the ranks other than 0 under torchrun
        self.records: dict[Point, dict] = {}
        if path.exists():
            if not resume:
                raise DeepLabError(
                    f"{path}: a search already ran here; pass --resume to continue it or "
                    "choose another output folder"
                )
            self._load()

    def _load(self) -> None:
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = point_key(rec[n_] for n_ in PARAM_NAMES)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise DeepLabError(f"{self.path}:{n}: not a search result line ({exc})") from exc
            if rec.get("setup") != self.setup:
                differ = _differences(rec.get("setup"), self.setup)
                raise DeepLabError(f"{self.path}:{n}: written with other settings ({differ}); "
                                   "--resume with the same settings, or use a new output "
                                   "folder")  # fmt: skip
            self.records[key] = rec

    def add(self, rec: dict) -> None:
        rec = dict(rec, setup=self.setup)
        self.records[point_key(rec[n] for n in PARAM_NAMES)] = rec
        if not self.write:
            return
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records.values())
        atomic_write_text(self.path, text)


# ---- evaluating points (in worker processes) ----------------------------------------------

_IMAGES: list | None = None
_CRF: tuple[int, str, str] = (10, "after", "lattice")


def load_tuning_images(scores_dir, dataset, num_images: int,
                       skipped: dict[str, str] | None = None) -> list:  # fmt: skip
    """The ``SavedImage`` (coarse scores, h, w, factor, crop, rgb, labels) of the first
    ``num_images`` images. With ``skipped`` given, an image or score file that cannot be read
    is left out and its error recorded there ({id: message}) instead of raised."""
    from deeplabv1.evaluate.scores import load_scores
    from deeplabv1.evaluate.tuning import SavedImage

    out = []
    for i in range(min(num_images, len(dataset))):
        try:
            rgb, labels = dataset.load(i)
            coarse, h, w, factor, crop = load_scores(scores_dir, dataset.ids[i])
            if (h, w) != labels.shape:
                raise DeepLabError(f"{scores_dir}/{dataset.ids[i]}.npz: size differs from the "
                                   "image")  # fmt: skip
        except DeepLabError as exc:
            if skipped is None:
                raise
            skipped[dataset.ids[i]] = str(exc)
            continue
        out.append(SavedImage(coarse, h, w, factor, crop, rgb, labels))
    return out


def init_worker(images: list | Callable[[], list], crf: tuple[int, str, str], threads: int):
    """Process initialiser: keep the tuning images and the CRF's (iters, normalization,
    method) in module globals."""
    global _IMAGES, _CRF
    _IMAGES = images() if callable(images) else images
    _CRF = crf
    if threads:  # the torch-free engine's, and torch's where the images brought it in
        from deeplabv1.crf import set_num_threads

        set_num_threads(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)


def evaluate_point(point: Point) -> dict:
    """Mean IoU (%) of the CRF with parameters ``point`` over the worker's images."""
    from deeplabv1.crf import CRFParams
    from deeplabv1.evaluate.metrics import ConfusionAccumulator, mean_iou, pixel_accuracy

    assert _IMAGES is not None, "init_worker was not called"
    params = CRFParams(*point)
    t0 = time.perf_counter()
    acc = None
    for item in _IMAGES:  # tuning.SavedImage or tuning.FolderImage
        if acc is None:
            acc = ConfusionAccumulator(item.num_classes)
        try:
            labels = item.crf_labels(params, *_CRF)
        except DeepLabError:
            raise
        except ValueError as exc:  # parameters the CRF cannot take (e.g. tiny std devs)
            shown = ", ".join(f"{n} {v:g}" for n, v in zip(PARAM_NAMES, point))
            raise DeepLabError(f"CRF at {shown}: {exc}") from exc
        acc.update(labels, item.labels)
    rec = dict(zip(PARAM_NAMES, point))
    rec["mean_iou"] = round(100 * mean_iou(acc.matrix), 4)
    rec["pixel_accuracy"] = round(100 * pixel_accuracy(acc.matrix), 4)
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return rec


def _loader(scores_dir: str, data: str, split: str, label_dir, num_classes: int, n: int,
            val_fraction: float | None = None, skipped: dict | None = None):  # fmt: skip
    from deeplabv1.data.datasets import open_dataset

    dataset = open_dataset(data, split, label_dir=label_dir, num_classes=num_classes,
                           val_fraction=val_fraction)  # fmt: skip
    return load_tuning_images(scores_dir, dataset, n, skipped)


class _Loader:
    """Picklable zero-argument callable that loads the tuning images in a worker; the images
    it cannot read are left out, their errors in ``skipped`` ({id: message})."""

    def __init__(self, *args):
        self.args = args
        self.skipped: dict[str, str] = {}

    def __call__(self) -> list:
        self.skipped = {}
        return _loader(*self.args, skipped=self.skipped)


def setup_fingerprint(cfg: CRFSearchConfig, ids: list[str]) -> dict:
    """What the points of one search depend on (checked on resume)."""
    from deeplabv1.evaluate.tuning import ids_digest

    return {"scores": str(Path(cfg.scores).resolve()), "split": cfg.split,
            "num_images": len(ids), "ids_sha1": ids_digest(ids), "iters": cfg.iters,
            "normalization": cfg.normalization, "method": cfg.method}  # fmt: skip


@contextlib.contextmanager
def _workers(jobs: int, count: int, loader, cfg) -> Iterator:
    """None (the points run in this process, its images loaded) or a pool of ``jobs``
    spawned processes (each loads the images once, uses one torch thread)."""
    crf = (cfg.iters, cfg.normalization, cfg.method)
    if jobs <= 1:
        global _IMAGES
        init_worker(loader, crf, 0)
        try:
            yield None
        finally:
            _IMAGES = None  # free the images
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")  # no fork of a process that already runs torch threads
    with ProcessPoolExecutor(min(jobs, count), mp_context=ctx, initializer=init_worker,
                             initargs=(loader, crf, 1)) as pool:  # fmt: skip
        yield pool


def run_points(points: list[Point], store: PointsFile, jobs: int, loader, cfg, bar) -> None:
    """Evaluate the points not in ``store`` yet, in ``jobs`` processes, recording each."""
    from concurrent.futures import as_completed

    todo = [p for p in dict.fromkeys(points) if p not in store.records]
    if not todo:
        return
    with _workers(jobs, len(todo), loader, cfg) as pool:
        if pool is None:
            for p in todo:
                store.add(evaluate_point(p))
                bar.update(1)
            return
        for fut in as_completed([pool.submit(evaluate_point, p) for p in todo]):
            store.add(fut.result())
            bar.update(1)


def run_points_sharded(points: list[Point], store: PointsFile, loader, cfg, bar, dist) -> None:
    """``run_points`` over torchrun's ranks: waves of ``world_size * jobs`` points, each rank
    evaluating its share; the records of a wave reach every rank and are added in the
    wave's order. An error on any rank stops every rank (a DeepLabError on each)."""
    from deeplabv1.distributed.context import gather_objects
    from deeplabv1.distributed.shard import shard
    from deeplabv1.distributed.work import check_all

    todo = [p for p in dict.fromkeys(points) if p not in store.records]
    if not todo:
        return
    per_wave = dist.world_size * cfg.jobs
    error = None
    with contextlib.ExitStack() as stack:
        try:
            pool = stack.enter_context(_workers(cfg.jobs, cfg.jobs, loader, cfg))
        except Exception as exc:  # e.g. an unreadable score file: tell the other ranks
            pool, error = None, f"rank {dist.rank}: {exc}"
        for start in range(0, len(todo), per_wave):
            wave = todo[start : start + per_wave]
            mine = shard(wave, dist.rank, dist.world_size, key=wave.index)
            records = []
            if error is None:
                try:
                    records = list(pool.map(evaluate_point, mine) if pool else
                                   map(evaluate_point, mine))  # fmt: skip
                except Exception as exc:
                    error = f"rank {dist.rank}: {exc}"
            check_all(error, dist, "crf-search")
            done = {point_key(r[n] for n in PARAM_NAMES): r
                    for recs in gather_objects(records, dist) for r in recs}  # fmt: skip
            for p in wave:
                store.add(done[p])
            bar.update(len(wave))


def saved_tuning(cfg: CRFSearchConfig, dataset, num_classes: int):
    """The ``tuning.Tuning`` of saved score maps (``cfg.scores``) of ``dataset``'s first
    ``cfg.num_images`` images."""
    from deeplabv1.evaluate.tuning import Tuning

    ids = dataset.ids[: cfg.num_images]
    if not ids:
        raise DeepLabError(f"crf-search: split {cfg.split!r} has no images")
    for flag in ("probabilities", "channels_last", "upsample"):
        if getattr(cfg, flag):
            raise DeepLabError(f"crf-search: --{flag.replace('_', '-')} applies to score folders "
                               "(--image-dir/--scores-dir), not to saved score maps")  # fmt: skip
    loader = _Loader(cfg.scores, cfg.data, cfg.split, cfg.label_dir, num_classes, len(ids),
                     cfg.val_fraction)  # fmt: skip
    return Tuning(ids, num_classes, loader, setup_fingerprint(cfg, ids))


def crf_search(cfg: CRFSearchConfig, tuning, progress=None, dist=None) -> dict:
    """Run the search on ``tuning`` (``saved_tuning`` or ``tuning.folder_tuning``) into
    ``cfg.out`` (``config.yaml`` once the images are read, ``points.jsonl``); returns {"best":
    record, "unary": record, "gain": points, "records": ..., "skipped": {id: error}}.

    Images that cannot be read are reported on stderr and left out of the search; none left is
    a DeepLabError.

    ``dist`` (a ``DistInfo``): share the points out over torchrun's ranks (module doc).
    """
    from tqdm import tqdm

    from deeplabv1.config import save_config
    from deeplabv1.distributed.context import DistInfo
    from deeplabv1.distributed.work import on_main
    from deeplabv1.evaluate.tuning import ids_digest, unary_record

    dist = dist if dist is not None else DistInfo()
    out = Path(cfg.out)
    images = tuning.loader()
    skipped = dict(getattr(tuning.loader, "skipped", {}))
    if not images:
        first = next(iter(skipped.values()), "no images")
        more = f"; {len(skipped) - 1} more skipped" if len(skipped) > 1 else ""
        raise DeepLabError(f"no usable image left: {first}{more}")
    for message in skipped.values() if dist.is_main else ():
        print(f"deeplabv1 crf-search: skipped {message}", file=sys.stderr)
    if all((im.labels == IGNORE_INDEX).all() for im in images):  # a mean IoU of NaN
        where = tuning.setup.get("labels") or cfg.data
        raise DeepLabError(f"{where}: every label pixel of the {len(images)} image(s) is 255 "
                           "(void): nothing to score the CRF on")  # fmt: skip
    used = [i for i in tuning.ids if i not in skipped]
    setup = {**tuning.setup, "num_images": len(used), "ids_sha1": ids_digest(used),
             **search_settings(cfg)}  # fmt: skip
    store = on_main(lambda: PointsFile(out / POINTS_NAME, setup, cfg.resume), dist)
    store.write = dist.is_main
    if dist.is_main:
        save_config(cfg, out / "config.yaml")
    unary = unary_record(images, tuning.num_classes)  # reads every file once, before the grid
    loader = images if cfg.jobs <= 1 else tuning.loader  # workers load their own
    del images
    show = (cfg.progress if progress is None else progress) and dist.is_main
    points = coarse_grid(cfg)
    steps = (cfg.w1_step, cfg.sa_step, cfg.sb_step)
    rounds: list[dict] = []
    best: dict = {}
    for r in range(cfg.refine_rounds + 1):
        if r > 0:
            steps = tuple(s / 2 for s in steps)
            points = refine_grid(point_key(best[n] for n in PARAM_NAMES), steps, grid_bounds(cfg))
        with tqdm(total=len(points), desc=f"crf-search round {r}", disable=not show) as bar:
            bar.update(sum(p in store.records for p in dict.fromkeys(points)))
            if dist.distributed:
                run_points_sharded(points, store, loader, cfg, bar, dist)
            else:
                run_points(points, store, cfg.jobs, loader, cfg, bar)
        best = best_record(store.records.values())
        rounds.append({"round": r, "points": len(points), "steps": list(steps),
                       "best": {n: best[n] for n in (*PARAM_NAMES, "mean_iou")}})  # fmt: skip
    return {"best": best, "unary": unary, "gain": round(best["mean_iou"] - unary["mean_iou"], 4),
            "rounds": rounds, "records": list(store.records.values()), "setup": store.setup,
            "skipped": skipped, "time": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
