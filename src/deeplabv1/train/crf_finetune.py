"""Stage 2 of ``deeplabv1 train --crf end-to-end``: the network and the CRF trained jointly.

Stage 1 is the paper's training (``loop.train``). Then, as CRF-as-RNN (Zheng et al. 2015), the
mean-field CRF becomes the last layer (``deeplabv1.crf.torch.layer.CRFLayer``): per crop, the fc8
scores are zoomed x8 to full resolution (align-corners bilinear, the test procedure's zoom), the
layer runs ``crf_train_iters`` (5) mean-field updates on them with the crop's RGB image, and
the softmax cross-entropy against the full-resolution labels (255 ignored) trains the network
(SGD, the paper's lr/decay multipliers on ``crf_base_lr``) and the CRF parameters (their own
``crf_lr``, no weight decay: the two kernel weights, the label compatibility initialised from
Potts, and with ``crf_learn_std`` the kernel standard deviations). The network's dropout is
off in this stage unless ``crf_dropout`` (measured on the demo: docs/crf_end_to_end.md). MSc
networks keep stage 1's freeze (``build.freeze_for_msc``): the parameters stage 1 trained (the
names in its optimizer's groups) are trained, the others stay frozen.

Outputs in ``<out_dir>/crf/``: ``log.jsonl``, ``checkpoint_<iter>.pt`` every
``crf_checkpoint_every`` iterations (the newest ``keep_checkpoints`` kept) and ``final.pt``, all
resumable training checkpoints (``train.state``: network, optimizer, iteration, data position,
RNG states) that also carry ``stage`` = ``"crf-end-to-end"``, ``crf_state`` (the layer's exact
parameters), ``stage1_iteration`` and the ``crf`` entry (``iters`` = ``crf_test_iters``, 10)
that ``eval`` and ``predict`` read. ``resume: auto`` continues from the newest of them that
loads, as stage 1 does (``state.find_resume``; stage 1, finished, runs no iteration);
``resume: <one of them>`` skips stage 1 (``loop.train``). Single process (under torchrun only
rank 0 runs this stage). """

from __future__ import annotations

import itertools
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deeplabv1.errors import DeepLabError
from deeplabv1.train import run_folder
from deeplabv1.train import state as st

STAGE_DIR = "crf"
STAGE_MARK = "crf-end-to-end"  # the ``stage`` entry of this stage's checkpoints


@dataclass
class CRFStageSettings:
    """The stage's settings; ``TrainConfig`` carries them as fields of the same names."""

    crf_max_iter: int = 1000  # joint iterations
    crf_checkpoint_every: int = 200  # resumable snapshot every K joint iterations (0: off)
    crf_base_lr: float = 1e-4  # network base lr in the joint stage (x10 classifier as usual)
    crf_lr: float = 1e-2  # lr of the CRF parameters
    crf_train_iters: int = 5  # mean-field updates unrolled in training (CRF-as-RNN: 5)
    crf_test_iters: int = 10  # updates at test time, saved in the checkpoint (CRF-as-RNN: 10)
    crf_learn_std: bool = False  # also learn sa, sb, sg (approximate gradient, see layer)
    crf_memory_checkpoint: bool = False  # torch.utils.checkpoint each update (less memory)
    crf_normalization: str = "after"  # DeepLab's
    crf_dropout: bool = False  # keep the network's dropout on in the joint stage (see docs)


def stage_settings(cfg) -> CRFStageSettings:
    """The CRF-stage settings of a TrainConfig (missing fields take the defaults above)."""
    return CRFStageSettings(**{f.name: getattr(cfg, f.name) for f in fields(CRFStageSettings)
                               if hasattr(cfg, f.name)})  # fmt: skip


def _rgb_batch(images: torch.Tensor) -> torch.Tensor:
    """Caffe inputs (B, 3, H, W) -> (B, H, W, 3) uint8 RGB (padding shows the mean colour)."""
    from deeplabv1.data.caffe_input import from_caffe_input

    return torch.from_numpy(np.stack([from_caffe_input(x) for x in images]))


def full_resolution(scores: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """fc8 scores zoomed x8 to (height, width) exactly as the test procedure (replicate/crop)."""
    from deeplabv1.models.inference import OUTPUT_STRIDE, zoom_scores

    full = zoom_scores(scores, OUTPUT_STRIDE)
    short_h, short_w = max(0, height - full.shape[-2]), max(0, width - full.shape[-1])
    if short_h or short_w:
        full = F.pad(full, (0, short_w, 0, short_h), mode="replicate")
    return full[..., :height, :width]


class StreamSampler(torch.utils.data.Sampler):
    """Items ``start .. stop - 1`` of the stage's data stream: indices drawn uniformly with
    replacement by ``RandomSampler`` seeded with ``seed``.

    The stream does not depend on ``stop`` (each draw extends it), so a resumed or a longer run
    continues exactly where the interrupted one stopped.
    """

    def __init__(self, num_items: int, *, seed: int, start: int, stop: int) -> None:
        self.num_items, self.seed, self.start, self.stop = num_items, seed, start, stop

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self):
        if self.stop <= self.start:
            return iter(())
        stream = torch.utils.data.RandomSampler(
            range(self.num_items), replacement=True, num_samples=self.stop,
            generator=torch.Generator().manual_seed(self.seed))  # fmt: skip
        return itertools.islice(iter(stream), self.start, None)


def is_stage_checkpoint(ckpt: dict) -> bool:
    """Whether a checkpoint dict was written by this stage."""
    return ckpt.get("stage") == STAGE_MARK


def resumes_joint_stage(cfg) -> bool:
    """Whether the run continues with this stage, stage 1 skipped: ``cfg.resume`` names a
    checkpoint of this stage, or is ``auto`` in a folder whose run started with this stage
    (resumed from another run's snapshot: checkpoints in ``crf/``, no stage-1 checkpoint)."""
    from deeplabv1.checkpoint import load_checkpoint

    if getattr(cfg, "crf", "none") != "end-to-end" or cfg.resume is None:
        return False
    out = Path(cfg.out_dir)
    if cfg.resume == "auto":
        stage = out / STAGE_DIR
        started_here = (stage / st.FINAL_NAME).is_file() or st.list_checkpoints(stage)
        return bool(started_here) and not ((out / st.FINAL_NAME).is_file()
                                           or st.list_checkpoints(out))  # fmt: skip
    return is_stage_checkpoint(load_checkpoint(st.find_resume(out, cfg.resume).path))


def _resume_state(cfg, out_dir: Path, stage1) -> tuple[st.ResumeFrom, dict | None]:
    """The checkpoint this stage continues from and its contents (None: a fresh start).

    ``resume: auto`` = the newest in ``out_dir`` that loads (those passed over are noted on
    stderr and kept), refused when it followed another stage 1; a path = that checkpoint when
    it is one of this stage's (a stage-1 path resumed stage 1).
    """
    from deeplabv1.checkpoint import load_checkpoint

    if not cfg.resume:
        return st.ResumeFrom(None), None
    found = st.find_resume(out_dir, cfg.resume)
    st.check_final_kept(found, out_dir, cfg.overwrite)
    for note in found.notes():
        print(f"deeplabv1 train: note: CRF stage: {note}", file=sys.stderr)
    path = found.path
    if path is None:
        return found, None
    ckpt = found.load()
    if not is_stage_checkpoint(ckpt):
        if cfg.resume == "auto":
            raise DeepLabError(f"{path}: not a checkpoint of the joint CRF stage")
        return st.ResumeFrom(None), None
    if cfg.resume == "auto" and Path(stage1).is_file():
        stage1_iter = load_checkpoint(stage1).get("iteration")
        if ckpt.get("stage1_iteration") != stage1_iter:
            raise DeepLabError(
                f"{path}: continues a stage 1 of {ckpt.get('stage1_iteration')} iterations, but "
                f"{stage1} has {stage1_iter}: move {out_dir} away to restart the joint stage")
    return found, ckpt


def _stage1_trained(ckpt: dict) -> set[str] | None:
    """The network parameters stage 1 trained: the names in its optimizer's groups (only
    trainable parameters have one), or None when the checkpoint holds no optimizer."""
    groups = (ckpt.get("optimizer") or {}).get("param_groups")
    if not groups or any("names" not in g for g in groups):
        return None
    return {name for g in groups for name in g["names"]} - {"crf"}


def _freeze_like_stage1(model, cfg, ckpt: dict) -> list[str]:
    """MSc networks: train exactly what stage 1 trained (``build.freeze_for_msc``: the trunk
    frozen, the branches trained, fc8 per ``msc_train_fc8`` or because it was re-initialised;
    everything without a checkpoint to start from). A checkpoint without its optimizer gets
    the recipe's freeze."""
    from deeplabv1.train.build import freeze_for_msc, msc_training
    from deeplabv1.train.config import replace

    if not getattr(model, "msc_branch_names", ()):
        return []
    trained = _stage1_trained(ckpt)
    if trained is None:
        note = freeze_for_msc(model, replace(cfg, arch=ckpt["arch"]).resolved_msc_train_fc8())
        return [f"CRF stage, {note}"]
    for name, param in model.named_parameters():
        param.requires_grad_(name in trained)
    return [f"CRF stage, MSc, as in stage 1: {msc_training(model)}"]


def finetune_crf(cfg, stage1: str | os.PathLike, settings: CRFStageSettings | None = None, *,
                 earlier=None, first_stage: bool = False) -> Path:  # fmt: skip
    """Joint fine-tuning from the stage-1 checkpoint; returns ``<out_dir>/crf/final.pt``.

    ``cfg`` is the run's TrainConfig (data, batch, device, seed, out_dir, checkpoint_every,
    keep_checkpoints, resume, ...); ``settings`` default to ``stage_settings(cfg)``. With
    ``cfg.resume`` set (see the module docstring) the stage continues from its own checkpoint
    exactly: same parameters, optimizer, data stream and RNG states as an uninterrupted run.
    ``earlier``: the earlier run in ``cfg.out_dir`` that this one replaces when it starts with
    this stage (``run_folder.EarlierRun``: set aside right before the stage first writes, deleted
    right before its first checkpoint). ``first_stage``: the run starts with this stage (stage 1
    done by another run or earlier): it writes the run's ``config.yaml``, as stage 1 would have
    (kept when it continues its own run).
    """
    from deeplabv1.checkpoint import load_checkpoint, model_from_checkpoint
    from deeplabv1.config import config_to_dict, save_config
    from deeplabv1.crf.torch.layer import CRFLayer
    from deeplabv1.crf.torch.meanfield import NORMALIZATIONS
    from deeplabv1.train.build import build_dataset
    from deeplabv1.train.config import replace
    from deeplabv1.train.distributed import resolve_device
    from deeplabv1.train.logger import TrainLogger
    from deeplabv1.train.optim import build_optimizer, build_scheduler

    s = settings if settings is not None else stage_settings(cfg)
    out_dir = Path(cfg.out_dir) / STAGE_DIR
    final = out_dir / st.FINAL_NAME
    if int(os.environ.get("RANK", "0")) != 0:
        return final
    if s.crf_max_iter < 1 or s.crf_train_iters < 1 or s.crf_test_iters < 1:
        raise DeepLabError("train config: crf_max_iter, crf_train_iters, crf_test_iters >= 1")
    if s.crf_normalization not in NORMALIZATIONS:  # (TrainConfig.validate: before stage 1)
        raise DeepLabError(f"train config: crf_normalization must be one of "
                           f"{', '.join(NORMALIZATIONS)}, got {s.crf_normalization!r}")  # fmt: skip
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    found, resumed = _resume_state(cfg, out_dir, stage1)
    kept = set() if cfg.overwrite else found.kept()  # unreadable checkpoints: never replaced
    ckpt = resumed if resumed is not None else load_checkpoint(stage1)
    source = ckpt.get("source", str(stage1)) if resumed is not None else str(stage1)
    stage1_iter = ckpt.get("stage1_iteration") if resumed is not None else ckpt.get("iteration")
    # dropout off by default: the CRF should learn on the unaries it will see at test time
    model = model_from_checkpoint(ckpt).to(device).train(s.crf_dropout)
    notes = _freeze_like_stage1(model, cfg, ckpt)
    num_classes = int(ckpt["num_classes"])
    layer = CRFLayer.from_checkpoint_entry(
        ckpt.get("crf") or ckpt["arch"], num_classes, iters=s.crf_train_iters,
        normalization=s.crf_normalization, learn_std=s.crf_learn_std,
        checkpoint=s.crf_memory_checkpoint,
    ).to(device)  # fmt: skip
    optimizer = build_optimizer(model, replace(cfg, base_lr=s.crf_base_lr))
    crf_params = [p for p in layer.parameters() if p.requires_grad]
    optimizer.add_param_group({"params": crf_params, "lr": s.crf_lr, "lr_mult": 1.0,
                               "weight_decay": 0.0, "names": ["crf"]})  # fmt: skip
    # the stage's lr is constant; the scheduler is the training state's usual companion
    scheduler = build_scheduler(optimizer, replace(cfg, lr_policy="fixed"))
    start_iter = position = 0
    if resumed is not None:
        path, state = found.path, resumed
        notes += st.check_resume_settings(path, state, config_to_dict(cfg),
                                          iteration_key="crf_max_iter")  # fmt: skip
        try:
            layer.load_state_dict(state["crf_state"])
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise DeepLabError(f"{path}: does not fit this run's network/CRF settings: {exc}") \
                from exc
        scheduler.load_state_dict(state["scheduler"])
        start_iter = int(state["iteration"])
        position = int(state.get("data_position", start_iter * cfg.batch_size))
        notes.append(f"CRF stage: resumed from {path} at iteration {start_iter}")
    dataset = build_dataset(cfg)
    sampler = StreamSampler(len(dataset), seed=cfg.seed + 1, start=position,
                            stop=s.crf_max_iter * cfg.batch_size)  # fmt: skip
    # the loader's own generator: creating it never draws from the global RNG (dropout's)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                                         num_workers=cfg.workers, drop_last=True,
                                         generator=torch.Generator().manual_seed(cfg.seed + 1))
    if earlier is not None:  # everything checked: the earlier run makes way
        earlier.set_aside()
    out_dir.mkdir(parents=True, exist_ok=True)
    record = Path(cfg.out_dir) / "config.yaml"
    if first_stage and (not run_folder.continues(cfg, Path(cfg.out_dir)) or not record.is_file()):
        save_config(cfg, record)
    logger = TrainLogger(out_dir, start_iter=start_iter, max_iter=s.crf_max_iter,
                         progress=cfg.progress, tensorboard=cfg.tensorboard)  # fmt: skip
    logger.message(f"CRF stage: joint fine-tuning from {source}, {layer}")
    for note in notes:
        logger.message(note)

    def save(path: Path, iteration: int) -> None:
        st.check_weights_finite({"": model, "crf.": layer}, iteration, "CRF stage")
        if earlier is not None:
            earlier.discard()
        st.save_training_checkpoint(
            path, model, config=config_to_dict(cfg), optimizer=optimizer, scheduler=scheduler,
            iteration=iteration, data_position=position, rng=[st.get_rng_state()],
            stage=STAGE_MARK, crf=layer.checkpoint_entry(s.crf_test_iters),
            crf_state={k: v.detach().cpu() for k, v in layer.state_dict().items()},
            crf_stage=asdict(s), source=source, stage1_iteration=stage1_iter,
        )  # fmt: skip

    if resumed is not None:
        st.set_rng_state(resumed["rng"][0])
    else:
        torch.manual_seed(cfg.seed + 1)
    t_start = t_window = time.perf_counter()
    window, window_loss = 0, 0.0
    log_every = max(1, min(cfg.log_every, s.crf_max_iter))
    batches = iter(loader)
    for it in range(start_iter, s.crf_max_iter):
        batch = next(batches)
        images = batch["image"].to(device)
        labels = batch["label"].to(device)
        scores = full_resolution(model(images), *labels.shape[-2:])
        logits = layer(scores.float(), _rgb_batch(batch["image"]).to(device))
        loss = F.cross_entropy(logits, labels, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        position += cfg.batch_size
        window_loss += loss.item()
        window += 1
        done = it + 1
        if done % log_every == 0 or done == s.crf_max_iter:
            if not np.isfinite(window_loss):
                raise DeepLabError(f"CRF stage diverged at iteration {done} (lower crf_lr)")
            now = time.perf_counter()
            w1, w2 = (float(x) for x in layer.weights.detach().cpu())
            logger.log({"iter": done, "loss": window_loss / window, "lr": s.crf_base_lr,
                        "images_per_s": window * cfg.batch_size / max(now - t_window, 1e-9),
                        "time": now - t_start, "crf_w1": w1, "crf_w2": w2})  # fmt: skip
            window, window_loss, t_window = 0, 0.0, now
        if s.crf_checkpoint_every and done % s.crf_checkpoint_every == 0 and done < s.crf_max_iter:
            t_save = time.perf_counter()
            path = st.checkpoint_path(out_dir, done)
            if path in kept:
                logger.message(f"CRF stage: checkpoint of iteration {done} not written: {path} "
                               "is unreadable and kept as it is (--overwrite replaces it)")
            else:
                save(path, done)
            st.prune_checkpoints(out_dir, cfg.keep_checkpoints, kept=found.kept())
            t_window += time.perf_counter() - t_save  # keep images/s about training only
    save(final, max(start_iter, s.crf_max_iter))
    logger.message(f"CRF stage: final checkpoint {final} ({layer.crf_params()})")
    logger.close()
    return final
