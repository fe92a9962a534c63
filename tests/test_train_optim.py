"""Optimiser groups, learning rates per group over the step schedule, and the SGD update rules."""

from __future__ import annotations

import pytest
import torch

from deeplabv1.models import build_model
from deeplabv1.train.build import freeze_for_msc
from deeplabv1.train.config import TrainConfig
from deeplabv1.train.optim import (
    CaffeSGD,
    build_optimizer,
    build_scheduler,
    lr_factor,
    parameter_groups,
)

W = 0.0625  # tiny width: the grouping does not depend on channel counts


def _lr_by_name(optimizer) -> dict[str, tuple[float, float]]:
    out = {}
    for group in optimizer.param_groups:
        for name in group["names"]:
            out[name] = (group["lr"], group["weight_decay"])
    return out


def test_largefov_groups_follow_the_solver_multipliers():
    model = build_model("deeplab-largefov", width=W)
    optimizer = build_optimizer(model, TrainConfig(data_root="x"))
    lrs = _lr_by_name(optimizer)
    assert set(lrs) == {n for n, _ in model.named_parameters()}
    for name, (lr, wd) in lrs.items():
        if name == "fc8.weight":
            assert (lr, wd) == (pytest.approx(1e-2), 5e-4)
        elif name == "fc8.bias":
            assert (lr, wd) == (pytest.approx(2e-2), 0.0)
        elif name.endswith(".bias"):
            assert (lr, wd) == (pytest.approx(2e-3), 0.0)
        else:
            assert (lr, wd) == (pytest.approx(1e-3), 5e-4)
    # exactly four groups: weights, biases, classifier weights, classifier biases
    assert sorted(g["lr_mult"] for g in optimizer.param_groups) == [1.0, 2.0, 10.0, 20.0]
    counts = {g["lr_mult"]: len(g["params"]) for g in optimizer.param_groups}
    assert counts == {1.0: 15, 2.0: 15, 10.0: 1, 20.0: 1}  # 13 convs + fc6 + fc7 in the trunk


@pytest.mark.parametrize("train_fc8", [True, False])
def test_msc_trains_only_branches_and_optionally_fc8(train_fc8):
    model = build_model("deeplab-msc-largefov", width=W)
    freeze_for_msc(model, train_fc8)
    groups = parameter_groups(model, TrainConfig(data_root="x"))
    names = {n for g in groups for n in g["names"]}
    layers = set(model.msc_layer_names)
    branch = {n for n, _ in model.named_parameters() if n.split(".")[0] in layers}
    assert len(branch) == 30  # 5 branches x 3 convs x (weight, bias)
    expected = branch | ({"fc8.weight", "fc8.bias"} if train_fc8 else set())
    assert names == expected
    mults = {n: g["lr_mult"] for g in groups for n in g["names"]}
    branch_classifiers = set(model.classifier_names) - {"fc8"}
    assert len(branch_classifiers) == 5 and branch_classifiers <= layers
    for name in expected:  # as released: branch classifiers and fc8 at x1, biases x2
        assert mults[name] == (2.0 if name.endswith(".bias") else 1.0), name


def test_step_schedule_lr_of_every_group_at_given_iterations():
    model = build_model("deeplab-largefov", width=W)
    cfg = TrainConfig(data_root="x")
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    seen = {}
    for it in range(6000):
        if it in (0, 1, 1999, 2000, 2001, 3999, 4000, 5999):
            seen[it] = sorted(g["lr"] for g in optimizer.param_groups)
        optimizer.step()  # no gradients: a no-op, keeps the scheduler's call order
        scheduler.step()
    for it, lrs in seen.items():
        factor = 0.1 ** (it // 2000)
        assert lrs == pytest.approx([1e-3 * factor, 2e-3 * factor, 1e-2 * factor, 2e-2 * factor])
    assert lr_factor(2000, cfg) == pytest.approx(0.1)
    assert lr_factor(7999, TrainConfig(data_root="x", lr_policy="fixed")) == 1.0


def _tiny_params():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    b = torch.nn.Parameter(torch.tensor([0.5]))
    return w, b


@pytest.mark.parametrize("variant", ["caffe", "pytorch"])
def test_sgd_update_matches_hand_computation(variant):
    w, b = _tiny_params()
    groups = [{"params": [w], "lr": 0.1, "weight_decay": 0.01},
              {"params": [b], "lr": 0.2, "weight_decay": 0.0}]
    cls = CaffeSGD if variant == "caffe" else torch.optim.SGD
    opt = cls(groups, lr=0.1, momentum=0.9)
    grads = [(torch.tensor([0.3, 0.1]), torch.tensor([1.0])),
             (torch.tensor([-0.2, 0.4]), torch.tensor([-0.5]))]
    lr_w, lr_b = [0.1, 0.01], [0.2, 0.02]  # an lr drop before the second step
    # hand computation in plain floats
    hw, hb = [1.0, -2.0], [0.5]
    vw, vb = [0.0, 0.0], [0.0]
    for step, (gw, gb) in enumerate(grads):
        for g, lr in zip(opt.param_groups, (lr_w[step], lr_b[step])):
            g["lr"] = lr
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        for vals, vel, grad, lr, wd in ((hw, vw, gw, lr_w[step], 0.01),
                                        (hb, vb, gb, lr_b[step], 0.0)):
            for i in range(len(vals)):
                d = float(grad[i]) + wd * vals[i]
                if variant == "caffe":  # v = m v + lr d; w -= v
                    vel[i] = 0.9 * vel[i] + lr * d
                    vals[i] -= vel[i]
                else:  # v = m v + d; w -= lr v
                    vel[i] = 0.9 * vel[i] + d
                    vals[i] -= lr * vel[i]
        assert w.detach().tolist() == pytest.approx(hw, rel=1e-6)
        assert b.detach().tolist() == pytest.approx(hb, rel=1e-6)


def test_caffe_and_pytorch_sgd_differ_only_after_an_lr_change():
    results = {}
    for variant in ("caffe", "pytorch"):
        w, _ = _tiny_params()
        opt = (CaffeSGD if variant == "caffe" else torch.optim.SGD)([w], lr=0.1, momentum=0.9)
        out = []
        for step in range(4):
            if step == 2:
                opt.param_groups[0]["lr"] = 0.01
            w.grad = torch.tensor([0.3, -0.1])
            opt.step()
            out.append(w.detach().clone())
        results[variant] = out
    for step in range(2):
        torch.testing.assert_close(results["caffe"][step], results["pytorch"][step])
    assert not torch.allclose(results["caffe"][2], results["pytorch"][2])
