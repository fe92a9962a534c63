"""Folder-level CRF for `deeplabv1 crf --image-dir ...`: every core, one process per core, and
under torchrun every rank its share of the pairs.

Each worker process runs one image at a time on one thread (the lattice filter is memory bound;
processes scale better than threads and avoid the GIL). On the CPU the workers run the
torch-free engine and never import torch (about 220 MiB and 1 s less per worker); with numba
absent or disabled (DEEPLABV1_CRF_NUMBA=0) they fall back to torch, also on one thread. A bad
file (whatever the error) is reported by name and the others continue; the exit status is then
1. The output folder is a ``deeplabv1.rundir.run_directory``: never an input folder, one run at
a time, and every output is checked before the first pair runs (never an input, never a file
deeplabv1 did not write unless ``--overwrite``); outputs are written atomically (a pair's
PNG and .npy together), so an interrupted run leaves finished outputs intact and a pair whose
outputs are all present is complete: ``--resume`` skips it (``crf_setup.json`` records what
the outputs depend on; a resume with other settings or inputs is refused). ``crf_summary.json``
lists the pairs processed, failed (with the error) and skipped, by stem.

Under torchrun (``deeplabv1.distributed``; WORLD_SIZE > 1) rank 0 locks the folder, writes the
config, the setup record and the merged summary, and returns the exit status for all (the
others return 0); every rank takes its block of the sorted pairs still to do (``shard``) and
runs it with its own worker processes (``--workers 0``: the machine's cores shared among its
ranks; every pair on one engine thread, so the outputs do not depend on the number of ranks),
or on ``cuda:LOCAL_RANK`` with ``--device cuda``. One process never joins a process group and,
on the CPU, never imports torch.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

__all__ = ["CONFIG", "SETUP", "SUMMARY", "crf_setup", "run_batch"]

SUFFIXES = {"png": (".png",), "npy": (".npy",), "both": (".png", ".npy")}
WROTE = {"png": "label maps", "npy": "marginals files", "both": "label map + marginals pairs"}
CONFIG = "crf_config.yaml"
SETUP = "crf_setup.json"
SUMMARY = "crf_summary.json"


def _init_worker() -> None:
    """One thread per worker, for whichever engine runs (torch only if already needed)."""
    import warnings

    from deeplabv1.crf.engine import threads

    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    if threads.available():
        threads.set_num_threads(1)
    else:  # the torch fallback (deeplab_crf_np imports torch on its first image anyway)
        import torch

        torch.set_num_threads(1)


def _work(job):
    stem, image, scores, out, params, options = job
    from deeplabv1.cli.crf_files import crf_file
    from deeplabv1.errors import describe_failure

    try:
        crf_file(image, scores, out, params, **options)
        return stem, None
    except Exception as exc:  # any failure is this pair's alone: report it, go on
        return stem, describe_failure(stem, exc)


def run_batch(cfg, params, options: dict) -> int:
    """CRF every stem-matched pair of cfg.image_dir / cfg.scores_dir into cfg.out_dir, alone
    or as one rank of torchrun's group; returns the exit status (0 on ranks other than 0)."""
    from deeplabv1.cli.crf_files import match_pairs, report_unmatched
    from deeplabv1.distributed.context import env_rank
    from deeplabv1.errors import DeepLabError
    from deeplabv1.rundir import group_run_directory

    pairs, no_scores, no_image, several, several_scores = match_pairs(
        Path(cfg.image_dir), Path(cfg.scores_dir))  # fmt: skip
    rank = env_rank()
    if rank == 0:
        report_unmatched("deeplabv1 crf", "image(s) without a score file", no_scores,
                         cfg.scores_dir)  # fmt: skip
        report_unmatched("deeplabv1 crf", "score file(s) without an image", no_image,
                         cfg.image_dir)  # fmt: skip
        report_unmatched("deeplabv1 crf", "stem(s) with more than one image", several,
                         cfg.image_dir)  # fmt: skip
        report_unmatched("deeplabv1 crf", "stem(s) with more than one score file",
                         several_scores, cfg.scores_dir)  # fmt: skip
    if not pairs:
        raise DeepLabError(f"{cfg.image_dir}, {cfg.scores_dir}: no image / score pairs by stem")
    inputs = [p for _, image, scores in pairs for p in (image, scores)]
    folders = {"--image-dir": cfg.image_dir, "--scores-dir": cfg.scores_dir}
    unmatched = {"images_without_scores": no_scores, "scores_without_images": no_image,
                 "stems_with_several_images": several,
                 "stems_with_several_score_files": several_scores}  # fmt: skip
    with group_run_directory(cfg.out_dir, rank=rank, inputs=inputs, input_folders=folders,
                             flag="--out-dir", overwrite=cfg.overwrite, command="crf") as out_dir, \
            _session(cfg.device) as dist:  # fmt: skip
        return _run_pairs(cfg, pairs, unmatched, out_dir, params, options, dist)


def _session(device: str):
    """torchrun's process group for the run, or none (and no torch) for one process."""
    from deeplabv1.distributed.context import (
        RANK_WAIT,
        DistInfo,
        distributed_session,
        env_world_size,
    )

    if env_world_size() <= 1:
        return contextlib.nullcontext(DistInfo())
    return distributed_session(device, RANK_WAIT)  # ranks may finish hours apart


def crf_setup(cfg, params, options: dict, pairs) -> dict:
    """What the outputs depend on (``--resume`` reuses them only if it matches): the pairs
    (stems and paths) and every setting that changes an output file."""
    import dataclasses
    import hashlib

    # os.fsencode: file names that are not UTF-8 hash as their bytes
    listing = os.fsencode("\n".join(f"{s}\t{i.resolve()}\t{n.resolve()}" for s, i, n in pairs))
    return {"pairs": {"count": len(pairs), "sha256": hashlib.sha256(listing).hexdigest()},
            "params": dataclasses.asdict(params), "iters": cfg.iters,
            "normalization": cfg.normalization, "probabilities": cfg.probabilities,
            "channels_last": cfg.channels_last, "upsample": options["upsample"],
            "background": cfg.background, "out_format": cfg.out_format}  # fmt: skip


def _run_pairs(cfg, pairs, unmatched: dict, out_dir: Path, params, options: dict, dist) -> int:
    from deeplabv1.config import save_config
    from deeplabv1.distributed.context import broadcast_object
    from deeplabv1.distributed.shard import shard
    from deeplabv1.distributed.work import (
        WorkSummary,
        close_work,
        on_every_rank,
        on_main,
        record_setup,
        split_complete,
    )
    from deeplabv1.io import check_outputs

    pairs = broadcast_object(pairs, dist)  # rank 0's listing: every rank splits the same list
    if dist.distributed and options["device"] != "cpu":
        options = {**options, "device": str(dist.device)}  # cuda:LOCAL_RANK
    outputs = {s: [out_dir / f"{s}{x}" for x in SUFFIXES[cfg.out_format]] for s, _, _ in pairs}
    names = [out_dir / n for n in (CONFIG, SETUP, SUMMARY)]
    on_main(lambda: check_outputs([*names, *(p for ps in outputs.values() for p in ps)]), dist)
    setup = crf_setup(cfg, params, options, pairs) if dist.is_main else {}
    record_setup(out_dir / SETUP, setup, cfg.resume, dist)
    on_main(lambda: save_config(cfg, out_dir / CONFIG), dist)
    todo, skipped = pairs, []
    if cfg.resume:
        todo, skipped = on_main(lambda: split_complete(pairs, lambda p: outputs[p[0]]), dist)
    summary = WorkSummary(rank=dist.rank)
    if dist.is_main:  # rank 0 found them and reports them
        summary.skipped = [s for s, _, _ in skipped]
    mine = shard(todo, dist.rank, dist.world_size, key=lambda p: p[0])
    jobs = [(s, str(i), str(n), [str(p) for p in outputs[s]], params, options)
            for s, i, n in mine]  # fmt: skip
    start = time.perf_counter()
    on_every_rank(lambda: _run_jobs(cfg, jobs, options, summary, dist), dist, "crf")
    summary.seconds = time.perf_counter() - start
    counts = close_work(_merged_summary(summary, unmatched, len(pairs), out_dir, dist),
                        out_dir / SETUP, dist)  # fmt: skip
    if not dist.is_main:
        return 0
    resumed = f", {counts['skipped']} skipped (outputs complete)" if cfg.resume else ""
    print(f"wrote {counts['processed']} of {len(pairs)} {WROTE[cfg.out_format]} to {out_dir}; "
          f"{counts['failed']} failed{resumed}")  # fmt: skip
    return 1 if counts["failed"] or any(unmatched.values()) else 0


def _worker_count(cfg, options: dict, num_jobs: int, dist) -> int:
    """Processes for this rank's pairs: --workers, else the cores of this machine shared among
    its ranks (torchrun's LOCAL_WORLD_SIZE); one on a GPU (one CUDA context is busy enough)."""
    if options["device"] != "cpu":
        return min(1, num_jobs)
    workers = cfg.workers
    if workers <= 0:
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if dist.distributed else 1
        workers = max(1, (os.cpu_count() or 1) // max(1, local_ranks))
    return min(workers, num_jobs)


def _run_jobs(cfg, jobs: list, options: dict, summary, dist) -> None:
    """Run ``jobs`` in this process or a pool of worker processes, recording each pair in
    ``summary`` and reporting failures by name; a progress bar on rank 0."""
    from tqdm import tqdm

    workers = _worker_count(cfg, options, len(jobs), dist)
    bar = tqdm(total=len(jobs), desc="crf", unit="img", file=sys.stderr, disable=not dist.is_main)
    pool = None
    if workers > 1:
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker)
        results = pool.imap_unordered(_work, jobs)
    else:
        if dist.distributed and options["device"] == "cpu":
            _init_worker()  # one engine thread per pair under torchrun, as in a worker
        results = map(_work, jobs)
    try:
        for stem, error in results:
            if error is None:
                summary.processed.append(stem)
            else:
                summary.failed[stem] = error
                tqdm.write(f"deeplabv1 crf: skipped {error}", file=sys.stderr)
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()


def _merged_summary(summary, unmatched: dict, num_pairs: int, out_dir: Path, dist):
    """Every rank's summary merged and written to ``crf_summary.json`` by rank 0; its counts
    on rank 0 (None on the others)."""
    from deeplabv1.distributed.context import gather_to_main
    from deeplabv1.distributed.work import merge_summaries, on_main
    from deeplabv1.io import atomic_write_json

    gathered = gather_to_main(summary, dist)
    report = None
    if dist.is_main:
        report = {"pairs": num_pairs, **merge_summaries(gathered), "unmatched": unmatched}
    on_main(lambda: atomic_write_json(out_dir / SUMMARY, report), dist)
    return report["counts"] if dist.is_main else None
