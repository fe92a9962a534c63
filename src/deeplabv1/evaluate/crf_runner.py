"""The dense CRF over a stream of images: on the network's device, batched, or the CPU engine.

Where it runs (``--crf-device``):

- ``cpu``: the torch-free CPU engine, the scores brought to the host;
- ``same``: the device the scores are on; on CUDA the torch lattice path (the permutohedral
  filter on the GPU), images of the same size batched into one call;
- ``auto`` (the default): ``same`` when the scores are on a CUDA device, else ``cpu``; without
  a GPU this is exactly the CPU engine, one image at a time.

``batch_size`` images of one size go through one call (default: 8 on CUDA, 1 elsewhere). Every
image gets the same labels as alone: images of a batch never share lattice points. Images wait
in per-size groups; a group runs when full, every group when more than ``4 * batch_size``
images wait (so a split of many sizes stays bounded in memory), and the rest at ``flush``. On
CUDA, a batch that runs out of GPU memory is redone image by image on the CPU engine (noted
once on stderr).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Hashable

import numpy as np
import torch

from deeplabv1.errors import DeepLabError

CRF_DEVICES = ("auto", "cpu", "same")
CUDA_BATCH_SIZE = 8


class CRFRunner:
    """Submit (key, scores (C, H, W) tensor, rgb (H, W, 3) uint8); get (key, labels) back."""

    def __init__(
        self,
        params,
        iters: int = 10,
        normalization: str = "after",
        method: str = "lattice",
        device: str = "auto",
        batch_size: int | None = None,
    ):
        if device not in CRF_DEVICES:
            raise DeepLabError(f"crf device: use one of {', '.join(CRF_DEVICES)}, not {device!r}")
        if batch_size is not None and batch_size < 1:
            raise DeepLabError(f"crf batch size: must be >= 1, got {batch_size}")
        self.params, self.iters, self.normalization, self.method = (
            params, iters, normalization, method,
        )  # fmt: skip
        self.device = device
        self.batch_size = batch_size
        self.seconds = 0.0  # time spent in CRF calls
        self.fallbacks = 0  # images redone on the CPU after a CUDA out-of-memory error
        self._pending: dict[tuple[int, int], list[tuple[Hashable, torch.Tensor, np.ndarray]]] = {}

    def target(self, scores_device: torch.device) -> torch.device:
        """Where the CRF of scores on ``scores_device`` runs."""
        if self.device == "cpu" or (self.device == "auto" and scores_device.type != "cuda"):
            return torch.device("cpu")
        return scores_device

    def _batch(self, device: torch.device) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return CUDA_BATCH_SIZE if device.type == "cuda" else 1

    def submit(self, key: Hashable, scores: torch.Tensor, rgb: np.ndarray) -> list:
        """Queue one image; returns the (key, labels (H, W) int64) of every image finished."""
        size = tuple(scores.shape[-2:])
        group = self._pending.setdefault(size, [])
        group.append((key, scores, np.asarray(rgb, dtype=np.uint8)))
        batch = self._batch(self.target(scores.device))
        if len(group) >= batch:
            return self._run(self._pending.pop(size))
        if sum(len(g) for g in self._pending.values()) > 4 * batch:
            return self.flush()
        return []

    def flush(self) -> list:
        """Run every waiting image; returns their (key, labels)."""
        done = []
        for size in list(self._pending):
            done += self._run(self._pending.pop(size))
        return done

    def _crf(self, scores: torch.Tensor, images: np.ndarray, device: torch.device) -> np.ndarray:
        from deeplabv1.crf import deeplab_crf

        probs = deeplab_crf(scores, images, params=self.params, iters=self.iters,
                            normalization=self.normalization, device=device,
                            method=self.method)  # fmt: skip
        return probs.argmax(-3).cpu().numpy()

    def _run(self, group: list) -> list:
        keys = [k for k, _, _ in group]
        device = self.target(group[0][1].device)
        t0 = time.perf_counter()
        if len(group) == 1:  # the call of a lone image, as without batching
            _, scores, rgb = group[0]
            labels = [self._crf(scores, rgb, device)]
        else:
            scores = torch.stack([s.to(device) for _, s, _ in group])
            images = np.stack([rgb for _, _, rgb in group])
            try:
                labels = list(self._crf(scores, images, device))
            except torch.cuda.OutOfMemoryError:
                if device.type != "cuda":
                    raise
                del scores
                torch.cuda.empty_cache()
                if not self.fallbacks:
                    print(f"note: the CRF ran out of GPU memory on a batch of {len(group)}; "
                          "such batches run on the CPU engine", file=sys.stderr)  # fmt: skip
                self.fallbacks += len(group)
                cpu = torch.device("cpu")
                labels = [self._crf(s, rgb, cpu) for _, s, rgb in group]
        self.seconds += time.perf_counter() - t0
        return list(zip(keys, labels))
