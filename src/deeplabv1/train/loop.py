"""The training loop, readable top to bottom: ``train(cfg) -> Path`` of the final checkpoint.

One iteration = ``batch_size`` images over all processes, as ``iter_size`` micro-batches per
process (gradient accumulation, Caffe's ``iter_size``). The loss of every micro-batch is its
cross-entropy sum divided by the number of valid (non-255) score-grid pixels of the whole batch,
so accumulation and DDP give the gradient of one big batch (``loss_norm: micro`` = Caffe's
per-micro-batch normalisation instead). Then one SGD step and one lr-schedule step.

Outputs in ``cfg.out_dir``: ``config.yaml`` (the resolved config; a resumed run keeps its run's
and must have the same settings: ``state.check_resume_settings``), ``log.jsonl``, ``tb/``
(TensorBoard, when installed), ``checkpoint_<iter>.pt`` every ``checkpoint_every`` iterations
(resumable: optimizer, scheduler, RNG states of every process, data position) and ``final.pt``.

``cfg.out_dir`` is a ``deeplabv1.rundir.run_directory`` held by rank 0 for the whole run (both
stages): a second run into it stops at once with an error naming the first; temporary files of
a killed run are removed; files there that the run would replace or prune must be ``train``'s
own (or, for files deeplabv1 did not write, ``overwrite``), and the ``init`` checkpoint is never
written over. An earlier run in the folder is continued (``resume``) or replaced
(``overwrite``) as ``run_folder`` says; ``resume: auto`` passes over checkpoints that do not
load (``state.find_resume``, one note each on stderr) and never deletes or writes over them
(without ``overwrite``).
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deeplabv1.config import config_to_dict, save_config
from deeplabv1.distributed.work import GroupError
from deeplabv1.errors import DeepLabError
from deeplabv1.io import check_outputs
from deeplabv1.models.inference import shrink_labels
from deeplabv1.train import run_folder
from deeplabv1.train import state as st
from deeplabv1.train.build import (
    build_dataset,
    build_loader,
    build_training_model,
    mask_warnings,
    resolve_train_config,
)
from deeplabv1.train.config import TrainConfig
from deeplabv1.train.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    gather_objects,
    init_distributed,
    wrap_model,
)
from deeplabv1.train.logger import TrainLogger
from deeplabv1.train.loss import check_grid, count_valid, cross_entropy_sum
from deeplabv1.train.optim import build_optimizer, build_scheduler, lr_factor


def seed_process(seed: int, rank: int) -> None:
    """Seed torch, numpy and python for this process (dropout differs between processes)."""
    state = np.random.SeedSequence([seed, rank]).generate_state(2)
    torch.manual_seed(int(state[0]))
    np.random.seed(int(state[1]))  # noqa: NPY002 - the global state other code may draw from
    random.seed(int(state[1]))


def train(cfg: TrainConfig) -> Path:
    """Train as ``cfg`` says (joining torchrun's process group if any); return ``final.pt``
    (``crf/final.pt`` with ``crf: end-to-end``)."""
    from deeplabv1.data.layout import input_folders
    from deeplabv1.rundir import run_directory

    cfg.validate()
    cfg = resolve_train_config(cfg)  # the split and number of classes the dataset implies
    if int(os.environ.get("RANK", "0")) != 0:  # rank 0 holds the run directory for everyone
        return _train_stages(cfg)
    out_dir = Path(cfg.out_dir)
    inputs = [cfg.init]
    if cfg.resume is not None and not run_folder.continues(cfg, out_dir):
        inputs.append(cfg.resume)  # a checkpoint of another run: never written over
    dataset = {"--data-root": input_folders(cfg.data_root, cfg.label_dir, cfg.split)}
    with run_directory(out_dir, inputs=inputs, input_folders=dataset, overwrite=cfg.overwrite,
                       flag="--out-dir", command="train"):  # fmt: skip
        run_folder.put_back_set_aside(out_dir)  # by a `train --overwrite` killed outright
        check_outputs(run_folder.replaceable(out_dir, cfg.resume == "auto"))
        earlier = run_folder.start_over(cfg, out_dir)
        if earlier is None:
            return _train_stages(cfg)
        try:
            final = _train_stages(cfg, earlier)
        except BaseException:
            earlier.restore()  # when this run stopped before its first checkpoint
            raise
        earlier.discard()  # (done by the first checkpoint already)
        return final


def _train_stages(cfg: TrainConfig, earlier: run_folder.EarlierRun | None = None) -> Path:
    if cfg.crf == "end-to-end":
        from deeplabv1.train import crf_finetune

        if crf_finetune.resumes_joint_stage(cfg):  # a joint-stage checkpoint: stage 1 is done
            return crf_finetune.finetune_crf(cfg, Path(cfg.out_dir) / st.FINAL_NAME,
                                             earlier=earlier, first_stage=True)  # fmt: skip
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = init_distributed(cfg.device)
    try:
        final = _train(cfg, info, earlier)
    finally:
        if owns_group:
            cleanup_distributed()
    if cfg.crf == "end-to-end":  # optional joint network + CRF stage (rank 0 only)
        from deeplabv1.train.crf_finetune import finetune_crf

        return finetune_crf(cfg, final)
    return final


def _train(cfg: TrainConfig, info: DistInfo, earlier: run_folder.EarlierRun | None = None) -> Path:
    try:
        cfg.validate(info.world_size)
    except DeepLabError as exc:  # the same settings on every rank: rank 0 reports it
        raise GroupError(str(exc)) from None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    out_dir = Path(cfg.out_dir)
    dataset = build_dataset(cfg)
    model, notes = build_training_model(cfg)
    notes += mask_warnings(dataset, cfg)  # on every rank: a bad mask stops them all alike
    model.to(info.device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)

    # --- start fresh or resume exactly ---
    start_iter, position = 0, 0
    resume = st.find_resume(out_dir, cfg.resume) if cfg.resume else st.ResumeFrom(None)
    st.check_final_kept(resume, out_dir, cfg.overwrite)
    kept = set() if cfg.overwrite else resume.kept()  # unreadable checkpoints: never replaced
    resume_path = resume.path
    if info.is_main:
        for note in resume.notes():
            print(f"deeplabv1 train: note: {note}", file=sys.stderr)
    if resume_path is not None:
        ckpt = resume.load()
        notes += st.check_resume_settings(resume_path, ckpt, config_to_dict(cfg))
        try:
            model.load_state_dict(ckpt["model"], strict=True)
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError) as exc:
            raise DeepLabError(f"{resume_path}: does not fit this run's network/config: {exc}") \
                from exc
        scheduler.load_state_dict(ckpt["scheduler"])
        start_iter = int(ckpt["iteration"])
        position = int(ckpt.get("data_position", start_iter * cfg.batch_size))
        if len(ckpt["rng"]) == info.world_size:
            st.set_rng_state(ckpt["rng"][info.rank])
        else:  # a different number of processes: exact continuation is impossible
            seed_process(cfg.seed + start_iter, info.rank)
            notes.append(f"resumed with {info.world_size} processes instead of "
                         f"{len(ckpt['rng'])}: RNG streams reseeded")
        notes.append(f"resumed from {resume_path} at iteration {start_iter}")
    else:
        seed_process(cfg.seed, info.rank)

    logger = None
    if info.is_main:
        if earlier is not None:  # everything checked: the earlier run makes way (EarlierRun)
            earlier.set_aside()
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume_path is None or not run_folder.continues(cfg, out_dir) or not (
                out_dir / "config.yaml").is_file():  # fmt: skip
            save_config(cfg, out_dir / "config.yaml")  # a resumed run keeps its run's record
        logger = TrainLogger(out_dir, start_iter=start_iter, max_iter=cfg.max_iter,
                             progress=cfg.progress, tensorboard=cfg.tensorboard)
        for note in notes:
            logger.message(note)

    net = ddp = wrap_model(model, info)
    if cfg.compile:
        net = torch.compile(ddp)
    batches = iter(build_loader(dataset, cfg, info, start_iter=start_iter, start_position=position))
    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    # batch: each process's loss is its share of the batch loss; DDP averages, so scale back up
    grad_scale = info.world_size if cfg.loss_norm == "batch" else 1
    label_offset = cfg.resolved_label_offset()
    model.train()
    window_loss = torch.zeros((), dtype=torch.float64, device=info.device)
    window_iters, t_start = 0, time.perf_counter()
    t_window = t_start

    for it in range(start_iter, cfg.max_iter):
        micro = [next(batches) for _ in range(cfg.iter_size)]
        images = [m["image"].to(info.device, non_blocking=True).contiguous(
            memory_format=memory_format) for m in micro]
        labels = [shrink_labels(m["label"], offset=label_offset).to(info.device, non_blocking=True)
                  for m in micro]  # fmt: skip
        batch_valid = all_reduce_sum(sum(count_valid(y) for y in labels), info).clamp(min=1)
        for k, (x, y) in enumerate(zip(images, labels)):
            last = k == cfg.iter_size - 1
            no_sync = ddp.no_sync() if info.distributed and not last else contextlib.nullcontext()
            with no_sync:
                with autocast:
                    scores = net(x)
                check_grid(y, scores, cfg.resolved_crop_size())
                if cfg.loss_norm == "batch":
                    loss = cross_entropy_sum(scores, y) / batch_valid.float()
                else:
                    loss = cross_entropy_sum(scores, y) / count_valid(y).clamp(min=1).float()
                    loss = loss / cfg.iter_size
                (loss * grad_scale).backward()
            window_loss += loss.detach()
        lr = cfg.base_lr * lr_factor(it, cfg)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        position += cfg.batch_size
        window_iters += 1
        done = it + 1

        if done % cfg.log_every == 0 or done == cfg.max_iter:
            total = all_reduce_sum(window_loss.clone(), info).item()
            loss_value = total / window_iters / (1 if cfg.loss_norm == "batch" else info.world_size)
            if not np.isfinite(loss_value):
                raise DeepLabError(f"training diverged: loss {loss_value} at iteration {done} "
                                   "(check the input convention, the init and the lr)")
            now = time.perf_counter()
            if logger is not None:
                logger.log({
                    "iter": done, "loss": loss_value, "lr": lr,
                    "images_per_s": window_iters * cfg.batch_size / max(now - t_window, 1e-9),
                    "time": now - t_start, "epoch": (position - 1) // len(dataset),
                })  # fmt: skip
            window_loss.zero_()
            window_iters, t_window = 0, now

        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.max_iter:
            t_save = time.perf_counter()
            path = st.checkpoint_path(out_dir, done)
            _save(path, model, cfg, optimizer, scheduler, done, position, info,
                  write=path not in kept, earlier=earlier)  # fmt: skip
            if info.is_main:
                if path in kept:
                    logger.message(f"checkpoint of iteration {done} not written: {path} is "
                                   "unreadable and kept as it is (--overwrite replaces it)")
                st.prune_checkpoints(out_dir, cfg.keep_checkpoints, kept=resume.kept())
            t_window += time.perf_counter() - t_save  # keep images/s about training only

    final = out_dir / st.FINAL_NAME
    _save(final, model, cfg, optimizer, scheduler, max(start_iter, cfg.max_iter), position, info,
          earlier=earlier)  # fmt: skip
    if logger is not None:
        logger.message(f"final checkpoint: {final}")
        logger.close()
    return final


def _save(path: Path, model, cfg, optimizer, scheduler, iteration, position, info, *,
          write: bool = True, earlier: run_folder.EarlierRun | None = None) -> None:  # fmt: skip
    """Gather every process's RNG state; rank 0 writes the checkpoint (unless not ``write``),
    the earlier run it replaces deleted first; everyone waits. Weights that hold NaN or
    infinite values stop the run instead (on every process: DDP keeps them equal)."""
    st.check_weights_finite({"": model}, iteration, "training")
    rng = gather_objects(st.get_rng_state(), info)
    if info.is_main and earlier is not None:
        earlier.discard()
    if info.is_main and write:
        st.save_training_checkpoint(path, model, config=config_to_dict(cfg), optimizer=optimizer,
                                    scheduler=scheduler, iteration=iteration,
                                    data_position=position, rng=rng)
    barrier(info)
