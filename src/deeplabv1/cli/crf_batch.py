"""Folder-level CRF for `deeplabv1 crf --image-dir ...`: every core, one process per core.

Each worker process runs one image at a time on one thread (the lattice filter is memory bound;
processes scale better than threads and avoid the GIL). On the CPU the workers run the
torch-free engine and never import torch (about 220 MiB and 1 s less per worker); with numba
absent or disabled (DEEPLABV1_CRF_NUMBA=0) they fall back to torch, also on one thread. A bad
file (whatever the error) is reported by name and the others continue; the exit status is then
1. The output folder is a ``deeplabv1.rundir.run_directory``: never an input folder, one run at
a time, and every output is checked before the first pair runs (never an input, never a file
deeplabv1 did not write unless ``--overwrite``); outputs are written atomically (a pair's
PNG and .npy together), so an interrupted run leaves finished outputs intact.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from pathlib import Path

__all__ = ["run_batch"]

SUFFIXES = {"png": (".png",), "npy": (".npy",), "both": (".png", ".npy")}
WROTE = {"png": "label maps", "npy": "marginals files", "both": "label map + marginals pairs"}


def _init_worker() -> None:
    """One thread per worker, for whichever engine runs (torch only if already needed)."""
    import warnings

    from deeplabv1.crf import numpy_lattice

    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    if numpy_lattice.available():
        numpy_lattice.set_num_threads(1)
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
    """CRF every stem-matched pair of cfg.image_dir / cfg.scores_dir into cfg.out_dir."""
    from deeplabv1.cli.crf_files import match_pairs, report_unmatched
    from deeplabv1.errors import DeepLabError
    from deeplabv1.rundir import run_directory

    pairs, no_scores, no_image = match_pairs(Path(cfg.image_dir), Path(cfg.scores_dir))
    report_unmatched("deeplabv1 crf", "image(s) without a score file", no_scores, cfg.scores_dir)
    report_unmatched("deeplabv1 crf", "score file(s) without an image", no_image, cfg.image_dir)
    if not pairs:
        raise DeepLabError(f"{cfg.image_dir}, {cfg.scores_dir}: no image / score pairs by stem")
    inputs = [p for _, image, scores in pairs for p in (image, scores)]
    folders = {"--image-dir": cfg.image_dir, "--scores-dir": cfg.scores_dir}
    with run_directory(cfg.out_dir, inputs=inputs, input_folders=folders, flag="--out-dir",
                       overwrite=cfg.overwrite) as out_dir:  # fmt: skip
        return _run_pairs(cfg, pairs, out_dir, params, options, no_scores or no_image)


def _run_pairs(cfg, pairs, out_dir: Path, params, options: dict, unmatched) -> int:
    from tqdm import tqdm

    from deeplabv1.config import save_config
    from deeplabv1.io import check_outputs

    suffixes = SUFFIXES[cfg.out_format]
    jobs = [(s, str(i), str(n), [str(out_dir / f"{s}{x}") for x in suffixes], params, options)
            for s, i, n in pairs]  # fmt: skip
    check_outputs([out_dir / "crf_config.yaml", *(p for job in jobs for p in job[3])])
    save_config(cfg, out_dir / "crf_config.yaml")
    workers = cfg.workers if cfg.workers > 0 else (os.cpu_count() or 1)
    if options.get("device") == "cuda":
        workers = 1  # one CUDA context; the GPU is busy enough
    workers = min(workers, len(jobs))
    failed = []
    bar = tqdm(total=len(jobs), desc="crf", unit="img", file=sys.stderr)
    if workers == 1:
        results = map(_work, jobs)
        pool = None
    else:
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker)
        results = pool.imap_unordered(_work, jobs)
    try:
        for stem, error in results:
            if error is not None:
                failed.append(stem)
                tqdm.write(f"deeplabv1 crf: skipped {error}", file=sys.stderr)
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    done = len(jobs) - len(failed)
    print(f"wrote {done} of {len(jobs)} {WROTE[cfg.out_format]} to {out_dir}; "
          f"{len(failed)} failed")  # fmt: skip
    return 1 if failed or unmatched else 0
