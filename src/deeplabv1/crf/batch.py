"""Folder-level CRF for `deeplabv1 crf --image-dir ...`: every core, one process per core.

Each worker process runs one image at a time on one thread (the lattice filter is memory bound;
processes scale better than threads and avoid the GIL). On the CPU the workers run the
torch-free engine and never import torch (about 220 MiB and 1 s less per worker); with numba
absent or disabled (DEEPLABV1_CRF_NUMBA=0) they fall back to torch, also on one thread. A bad
file is reported by name and the others continue; outputs are written atomically, so an
interrupted run leaves finished PNGs intact.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from pathlib import Path

__all__ = ["run_batch"]


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
    from deeplabv1.crf.files import crf_file

    try:
        crf_file(image, scores, out, params, **options)
        return stem, None
    except (ValueError, OSError, RuntimeError) as exc:  # DeepLabError is a ValueError
        return stem, f"{exc}"


def _report(kind: str, stems: list[str], folder) -> None:
    if stems:
        shown = ", ".join(stems[:20]) + (f", ... ({len(stems)} in all)" if len(stems) > 20 else "")
        print(f"deeplabv1 crf: {len(stems)} {kind} in {folder}: {shown}", file=sys.stderr)


def run_batch(cfg, params, options: dict) -> int:
    """CRF every stem-matched pair of cfg.image_dir / cfg.scores_dir into cfg.out_dir."""
    from tqdm import tqdm

    from deeplabv1.config import save_config
    from deeplabv1.crf.files import match_pairs
    from deeplabv1.errors import DeepLabError

    pairs, no_scores, no_image = match_pairs(Path(cfg.image_dir), Path(cfg.scores_dir))
    _report("image(s) without a score file", no_scores, cfg.scores_dir)
    _report("score file(s) without an image", no_image, cfg.image_dir)
    if not pairs:
        raise DeepLabError(f"{cfg.image_dir}, {cfg.scores_dir}: no image / score pairs by stem")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "crf_config.yaml")
    jobs = [(s, str(i), str(n), str(out_dir / f"{s}.png"), params, options) for s, i, n in pairs]
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
                tqdm.write(f"deeplabv1 crf: {stem}: {error}", file=sys.stderr)
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    done = len(jobs) - len(failed)
    print(f"wrote {done} of {len(jobs)} label maps to {out_dir}; {len(failed)} failed")
    return 1 if failed or no_scores or no_image else 0
