"""The optimiser every trainer builds (trainers/common.py::build_optimizer): parameter groups
(no weight decay on biases and norms), torch AdamW's fused kernel by default where the
parameters allow it, the per-parameter loop on request, and both taking the same step."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from simple_rlhf.config import ConfigError, OptimArgs
from simple_rlhf.trainers.common import build_optimizer, fused_adamw_ok


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)


def stepped(optim: OptimArgs, steps: int = 3) -> tuple[Net, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = Net()
    opt = build_optimizer(net, optim)
    x = torch.randn(5, 4)
    for _ in range(steps):
        opt.zero_grad()
        net.norm(net.proj(x)).pow(2).sum().backward()
        opt.step()
    return net, opt


def test_fused_by_default_and_loop_on_request():
    optim = OptimArgs(learning_rate=1e-2, weight_decay=0.1)
    _, fused = stepped(optim, steps=0)
    assert all(g["fused"] for g in fused.param_groups)
    _, loop = stepped(dataclasses.replace(optim, optim="adamw_torch"), steps=0)
    assert not any(g["fused"] for g in loop.param_groups)
    decay = {g["weight_decay"]: len(g["params"]) for g in fused.param_groups}
    assert decay == {0.1: 1, 0.0: 3}  # the weight matrix decays; bias, norm weight, norm bias not


def test_fused_and_loop_take_the_same_steps():
    optim = OptimArgs(learning_rate=1e-2, weight_decay=0.1)
    a, _ = stepped(optim)
    b, _ = stepped(dataclasses.replace(optim, optim="adamw_torch"))
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(a.proj.weight, Net().proj.weight)  # it did move


def test_fused_only_where_the_kernel_applies():
    assert fused_adamw_ok([torch.nn.Parameter(torch.zeros(2))])
    assert fused_adamw_ok([torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))])
    assert not fused_adamw_ok([torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))])
    assert not fused_adamw_ok([torch.nn.Parameter(torch.zeros(2, device="meta"))])
    net = Net().double()
    opt = build_optimizer(net, OptimArgs())
    assert not any(g["fused"] for g in opt.param_groups)


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(ConfigError, match="optim: 'sgd' is not one of adamw_torch_fused"):
        OptimArgs(optim="sgd")


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant", "constant_with_warmup"])
@pytest.mark.parametrize("warmup_steps", [0, 3])
def test_schedules_equal_transformers(kind, warmup_steps):
    """The schedules are built here (transformers' get_scheduler costs ~1 s of imports) with the
    same multipliers as transformers' schedules of the same names, step by step."""
    from transformers import get_scheduler

    from simple_rlhf.trainers.common import build_scheduler

    optim = OptimArgs(
        learning_rate=0.1, lr_scheduler_type=kind, num_warmup_steps=warmup_steps, warmup_ratio=0.0
    )
    ours_opt = build_optimizer(Net(), optim)
    theirs_opt = build_optimizer(Net(), optim)
    ours = build_scheduler(ours_opt, optim, total_steps=10)
    theirs = get_scheduler(kind, theirs_opt, num_warmup_steps=warmup_steps, num_training_steps=10)
    got, want = [], []
    for _ in range(12):
        got.append(ours.get_last_lr()[0])
        want.append(theirs.get_last_lr()[0])
        ours_opt.step(), theirs_opt.step()
        ours.step(), theirs.step()
    assert got == want  # the same floats: runs stay bit-identical
    if kind in ("linear", "cosine"):
        assert got[0] == (0.0 if warmup_steps else 0.1) and got[10] == 0.0


def test_hand_worked_linear_schedule():
    from simple_rlhf.trainers.common import lr_factor

    # warm-up 2 of 6 steps: 0, 1/2, then (6 - s) / 4
    assert [lr_factor("linear", s, 2, 6) for s in range(7)] == [0, 0.5, 1, 0.75, 0.5, 0.25, 0]
    assert lr_factor("cosine", 4, 2, 6) == pytest.approx(0.5)  # half-way down the cosine
