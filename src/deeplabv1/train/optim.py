"""The paper's optimiser: per-layer lr/decay multipliers, Caffe-style SGD and the "step" policy.

Caffe multiplies each blob's learning rate by ``lr_mult`` and its weight decay by
``decay_mult``. The released train prototxts give weights lr x1 / decay x1, biases lr x2 /
decay x0, and the plain variants' fc8 x10 on top (weight x10, bias x20): the layers in
``model.high_lr_names``. The MSc releases train fc8 and the branch classifiers at x1 / x2 like
every other layer. Parameters with ``requires_grad=False`` (the frozen MSc trunk) are left out
of the optimiser.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from deeplabv1.train.config import TrainConfig


def parameter_multipliers(
    model: nn.Module, *, classifier_lr_mult: float = 10.0, bias_lr_mult: float = 2.0
) -> dict[str, tuple[float, float]]:
    """``{param name: (lr_mult, decay_mult)}`` for every trainable parameter of ``model``.

    A parameter gets ``classifier_lr_mult`` when its module name is in ``model.high_lr_names``
    (or nested under one); a bias is a 1-D parameter named ``*.bias``.
    """
    classifiers = tuple(getattr(model, "high_lr_names", ("fc8",)))
    out = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        module = name.rsplit(".", 1)[0]
        is_classifier = any(module == c or module.startswith(c + ".") for c in classifiers)
        is_bias = name.endswith(".bias")
        lr_mult = classifier_lr_mult if is_classifier else 1.0
        lr_mult *= bias_lr_mult if is_bias else 1.0
        out[name] = (lr_mult, 0.0 if is_bias else 1.0)
    return out


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Optimiser groups, one per (lr_mult, decay_mult), each with ``lr_mult`` and ``names``."""
    mults = parameter_multipliers(
        model, classifier_lr_mult=cfg.classifier_lr_mult, bias_lr_mult=cfg.bias_lr_mult
    )
    params = dict(model.named_parameters())
    groups: dict[tuple[float, float], dict] = {}
    for name, (lr_mult, decay_mult) in mults.items():
        group = groups.setdefault(
            (lr_mult, decay_mult),
            {
                "params": [],
                "names": [],
                "lr": cfg.base_lr * lr_mult,
                "lr_mult": lr_mult,
                "weight_decay": cfg.weight_decay * decay_mult,
            },
        )
        group["params"].append(params[name])
        group["names"].append(name)
    return list(groups.values())


class CaffeSGD(torch.optim.Optimizer):
    """Caffe's SGD: ``v = momentum * v + lr * (grad + weight_decay * w)``; ``w -= v``.

    PyTorch's SGD keeps the lr out of the momentum buffer (``v = m v + g``; ``w -= lr v``); the two
    agree while the lr is constant and differ for a few hundred iterations after a step drop,
    where Caffe's buffer still carries updates made at the old lr.
    """

    def __init__(
        self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0
    ) -> None:
        if lr <= 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"bad SGD settings lr={lr} momentum={momentum} wd={weight_decay}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer API
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads, alpha=group["lr"])
            torch._foreach_sub_(params, bufs)
        return loss


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD over ``parameter_groups`` in the configured variant (``caffe`` or ``pytorch``)."""
    groups = parameter_groups(model, cfg)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if cfg.sgd_variant == "caffe":
        return CaffeSGD(groups, lr=cfg.base_lr, momentum=cfg.momentum)
    return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum)


def lr_factor(iteration: int, cfg: TrainConfig) -> float:
    """The policy's multiplier of every group's lr at (0-based) ``iteration``.

    Caffe "step": ``gamma ** floor(iteration / step_size)``; "fixed": 1.
    """
    if cfg.lr_policy == "fixed":
        return 1.0
    return cfg.gamma ** (iteration // cfg.step_size)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """A ``LambdaLR`` applying ``lr_factor``; call ``step()`` once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg))
