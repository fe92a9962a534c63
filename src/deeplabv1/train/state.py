"""Training state for exact resume: RNG states, checkpoint naming, save, find, prune.

A training checkpoint is a ``deeplabv1.checkpoint`` dict plus ``optimizer``, ``scheduler``,
``iteration`` (completed iterations), ``data_position`` (stream items consumed),
``rng`` (one entry per process: torch, CUDA, numpy and python states) and ``world_size``.
Every value is a tensor or plain Python data, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from deeplabv1.checkpoint import load_checkpoint, nonfinite_weights, save_checkpoint
from deeplabv1.errors import DeepLabError
from deeplabv1.io import is_ours

CHECKPOINT_RE = re.compile(r"^checkpoint_(\d{6,})\.pt$")
FINAL_NAME = "final.pt"


def checkpoint_path(out_dir: str | Path, iteration: int) -> Path:
    """``out_dir/checkpoint_<iteration, 6 digits>.pt``."""
    return Path(out_dir) / f"checkpoint_{iteration:06d}.pt"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Periodic checkpoints in ``out_dir`` as ``(iteration, path)``, oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = []
    for path in out_dir.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def is_checkpoint_name(name: str) -> bool:
    """Whether ``name`` is a run's checkpoint name (``checkpoint_<iter>.pt`` or ``final.pt``)."""
    return name == FINAL_NAME or CHECKPOINT_RE.match(name) is not None


class Unreadable(NamedTuple):
    """A checkpoint that ``--resume auto`` passed over: its path and why it does not load."""

    path: Path
    why: str


class ResumeFrom(NamedTuple):
    """What ``find_resume`` chose: the checkpoint to continue from (None: start fresh) and the
    newer ones it passed over because they do not load, newest first."""

    path: Path | None
    passed_over: tuple[Unreadable, ...] = ()
    loaded: dict | None = None  # the checkpoint's contents when choosing it loaded them

    def load(self) -> dict:
        """The checkpoint's contents (``load_training_checkpoint``), read once."""
        return self.loaded if self.loaded is not None else load_training_checkpoint(self.path)

    def notes(self) -> list[str]:
        """One line per checkpoint passed over: which file, why, and what is resumed instead."""
        return [f"{u.path}: {u.why}; resuming from {self.path} instead (the unreadable file "
                "is kept as it is)" for u in self.passed_over]  # fmt: skip

    def kept(self) -> set[Path]:
        """The checkpoints passed over: a resumed run never deletes or writes over them."""
        return {u.path for u in self.passed_over}


def _try_load(path: Path) -> dict | Unreadable:
    """The resumable checkpoint at ``path``, or why it does not load as one."""
    try:
        return load_training_checkpoint(path)
    except DeepLabError as exc:
        return Unreadable(path, str(exc).removeprefix(f"{path}: "))


def is_unreadable(path: str | Path) -> bool:
    """Whether ``path`` does not load as a resumable checkpoint (``--resume auto`` would pass
    over it)."""
    return isinstance(_try_load(Path(path)), Unreadable)


def find_resume(out_dir: str | Path, resume: str) -> ResumeFrom:
    """The checkpoint ``resume`` names: a path, or ``"auto"`` = the newest in ``out_dir``
    (``checkpoint_<iter>.pt`` or ``final.pt``, whichever is at the larger iteration).

    ``"auto"`` passes over checkpoints that do not load (cut short, not a checkpoint, lacking
    the training state) and takes the newest one that does; with nothing to resume from it
    returns ``ResumeFrom(None)`` (start from scratch), and when there are checkpoints but none
    loads it raises a DeepLabError naming the folder. A path is returned as it is (a file that
    does not load is an error where it is read).
    """
    if resume != "auto":
        path = Path(resume)
        if not path.is_file():
            raise DeepLabError(f"{path}: resume checkpoint not found")
        return ResumeFrom(path)
    final = Path(out_dir) / FINAL_NAME
    passed_over = []
    final_ckpt = None  # final.pt's contents when it loads
    if final.is_file():
        loaded = _try_load(final)
        if isinstance(loaded, Unreadable):  # its iteration is unknown: most likely the newest
            passed_over.append(loaded)
        else:
            final_ckpt = loaded
    for iteration, path in reversed(list_checkpoints(out_dir)):  # newest first
        if final_ckpt is not None and iteration < int(final_ckpt["iteration"]):
            break  # final.pt is newer than the rest
        loaded = _try_load(path)
        if not isinstance(loaded, Unreadable):
            return ResumeFrom(path, tuple(passed_over), loaded)
        passed_over.append(loaded)
    if final_ckpt is not None:
        return ResumeFrom(final, tuple(passed_over), final_ckpt)
    if passed_over:
        first, n = passed_over[0], len(passed_over)
        count = "its checkpoint does not load" if n == 1 else f"none of its {n} checkpoints loads"
        raise DeepLabError(
            f"{out_dir}: nothing to resume from: {count} ({first.path.name}: {first.why}); "
            "pass a checkpoint that loads with --resume PATH, or start over with --overwrite "
            "instead of --resume"
        )
    return ResumeFrom(None)


def check_final_kept(found: ResumeFrom, out_dir: str | Path, overwrite: bool) -> None:
    """Refuse (before any work) a resume that would end by writing ``final.pt`` over an
    unreadable ``final.pt`` it passed over, unless ``overwrite``."""
    final = Path(out_dir) / FINAL_NAME
    bad = next((u for u in found.passed_over if u.path == final), None)
    if bad is not None and not overwrite:
        raise DeepLabError(
            f"{final}: {bad.why}; resuming from {found.path} ends by writing a new "
            f"{FINAL_NAME} over it: move it away to keep it, or pass --overwrite to replace it"
        )


def prune_checkpoints(out_dir: str | Path, keep: int, kept: Collection[Path] = ()) -> None:
    """Delete all but the newest ``keep`` periodic checkpoints (``keep=0``: keep all); the
    ``kept`` ones (``ResumeFrom.kept``) neither count nor are deleted."""
    if keep <= 0:
        return
    found = [path for _, path in list_checkpoints(out_dir) if path not in kept]
    for path in found[:-keep]:
        if is_ours(path):  # never a file deeplabv1 did not write (even with --overwrite)
            path.unlink(missing_ok=True)


def get_rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and python RNG states as plain data and tensors."""
    _, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - saved for resume
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``get_rng_state`` captured."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(  # noqa: NPY002 - restored for an exact resume
        ("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
         npst["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_weights_finite(modules: dict[str, torch.nn.Module], iteration: int, what: str) -> None:
    """Raise DeepLabError when a weight of ``modules`` (name -> module) holds NaN or infinite
    values: the loss is checked only on log lines, so a run can diverge between them, and such
    a checkpoint (which ``predict``, ``eval`` and ``export`` refuse) must not be written."""
    bad = [f"{prefix}{name}" for prefix, module in modules.items()
           for name in nonfinite_weights(module.state_dict())]  # fmt: skip
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise DeepLabError(f"{what} diverged: weights hold NaN or infinite values at iteration "
                           f"{iteration} ({shown}); no checkpoint written (check the input "
                           "convention, the init and the lr)")  # fmt: skip


def save_training_checkpoint(
    path: Path,
    model: torch.nn.Module,
    *,
    config: dict,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    iteration: int,
    data_position: int,
    rng: list[dict],
    **extra: Any,
) -> None:
    """Write a resumable checkpoint atomically (checkpoint format + training state + ``extra``
    keys, e.g. the joint CRF stage's layer state)."""
    save_checkpoint(
        path,
        model.state_dict(),
        arch=model.arch,
        num_classes=model.num_classes,
        width=model.width,
        model_kwargs=getattr(model, "model_kwargs", {}),
        config=config,
        class_names=getattr(model, "class_names", None),
        palette=getattr(model, "palette", None),
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        iteration=int(iteration),
        data_position=int(data_position),
        rng=rng,
        world_size=len(rng),
        **extra,
    )


# settings a resumed run may change: where it writes, what it shows, how it loads and runs
# (not what it computes, up to floating-point rounding), and how long it goes on
RESUME_FREE = frozenset({
    "out_dir", "overwrite", "resume", "log_every", "progress", "tensorboard", "workers",
    "checkpoint_every", "keep_checkpoints", "crf_checkpoint_every", "threads", "device",
    "compile", "channels_last", "max_iter", "crf_max_iter",
})  # fmt: skip
_PATH_SETTINGS = ("data_root", "init", "split", "label_dir")


def _same_setting(key: str, old: Any, new: Any) -> bool:
    if old == new:
        return True
    if key in _PATH_SETTINGS and isinstance(old, str) and isinstance(new, str):
        try:
            return os.path.samefile(old, new)  # the same file or folder, named differently
        except OSError:
            return False
    return False


def check_resume_settings(path: Path, ckpt: dict, config: dict, *,
                          iteration_key: str = "max_iter") -> list[str]:  # fmt: skip
    """Refuse resuming ``ckpt`` (read from ``path``) with a ``config`` whose settings that
    affect the result differ from those it was trained with (all but ``RESUME_FREE``), or
    whose ``iteration_key`` (the run's length) is below the checkpoint's iteration. Returns
    notes on the free settings that changed (for the log)."""
    saved = ckpt.get("config") or {}
    shared = [k for k in config if k in saved]  # a setting older files lack is not compared
    differ = [k for k in shared
              if k not in RESUME_FREE and not _same_setting(k, saved[k], config[k])]  # fmt: skip
    if differ:
        shown = ", ".join(f"{k} {saved[k]!r} -> {config[k]!r}" for k in differ[:6])
        more = f" and {len(differ) - 6} more" if len(differ) > 6 else ""
        raise DeepLabError(
            f"{path}: was trained with other settings ({shown}{more}); a resumed run keeps "
            "them (only output, logging, loader, device and length settings may change): drop "
            "those flags, or start a new run (--init) in another folder"
        )
    iteration = int(ckpt.get("iteration", 0))
    if iteration > int(config[iteration_key]):
        raise DeepLabError(
            f"{path}: is at iteration {iteration}, past --{iteration_key.replace('_', '-')} "
            f"{config[iteration_key]}; pass a larger value to go on from it"
        )
    return [f"resumed with {k} {saved[k]!r} -> {config[k]!r}" for k in shared
            if k in RESUME_FREE and k not in ("resume", "overwrite")
            and not _same_setting(k, saved[k], config[k])]  # fmt: skip


def load_training_checkpoint(path: Path) -> dict:
    """Read a checkpoint (on the CPU) and check that it carries what ``--resume`` needs."""
    ckpt = load_checkpoint(path, map_location="cpu")
    missing = [k for k in ("optimizer", "scheduler", "iteration", "rng") if k not in ckpt]
    if missing:
        raise DeepLabError(
            f"{path}: not a resumable training checkpoint (lacks {', '.join(missing)}); "
            "use it with --init instead"
        )
    return ckpt
