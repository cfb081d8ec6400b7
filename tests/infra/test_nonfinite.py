"""The non-finite guard: a NaN/inf gradient never reaches the weights, a diverged run stops with a
clear message and a non-zero exit before saving, and the RL trainers check logits before
sampling."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from simple_rlhf.infra.engine import guarded_step
from simple_rlhf.infra.guard import NonFiniteError, NonFiniteGuard


def test_guard_skips_counts_and_stops_after_the_limit(capsys):
    g = NonFiniteGuard("actor", limit=3)
    assert g.allow(1.0) and not g.allow(float("nan")) and not g.allow(float("inf"))
    assert g.allow(2.0) and g.in_a_row == 0 and g.skipped == 2  # a finite step resets the run
    assert not g.allow(float("nan")) and not g.allow(float("nan"))
    with pytest.raises(NonFiniteError, match=r"actor: 3 optimiser steps in a row .*step 7"):
        g.allow(float("-inf"))
    assert capsys.readouterr().err.count("skipped: gradient norm") == 5


def test_guarded_step_leaves_weights_alone_on_a_nan_gradient():
    """A NaN in one gradient entry: the norm is NaN, the optimiser does not step (weights and
    AdamW state unchanged), the schedule advances, gradients are cleared."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    guard = NonFiniteGuard(limit=5)
    model(torch.ones(1, 4)).sum().backward()
    assert math.isfinite(guarded_step(model, opt, sched, 1.0, guard))  # a real step
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.ones(1, 4)).sum().backward()
    model.weight.grad[0, 0] = float("nan")
    assert math.isnan(guarded_step(model, opt, sched, 1.0, guard))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert guard.skipped == 1 and sched.last_epoch == 2 and model.weight.grad is None
    assert opt.state[model.weight]["step"].item() == 1.0


@pytest.fixture(scope="module")
def nan_model(tiny_base, tmp_path_factory):
    """The tiny base model with one NaN in its final norm: every forward gives NaN logits."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("nan_model")
    for f in tiny_base.iterdir():
        shutil.copy(f, out / f.name)
    sd = load_file(str(out / "model.safetensors"))
    sd["model.norm.weight"][3] = float("nan")
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        ("sft", []),
        ("dpo", []),
        ("grpo", ["--reward-funcs", "tiny_gold", "--num-rollouts", "2"]),
        ("ppo", ["--reward-funcs", "tiny_gold", "--num-rollouts", "2"]),
    ],
)
def test_a_diverged_run_stops_with_a_message_and_saves_nothing(
    command, extra, nan_model, tmp_path, capsys
):
    """From a model whose outputs are NaN: the offline trainers skip every update and stop after
    3 in a row; the RL trainers stop at the first sampling (NaN logits). Exit 2, one error line
    (no traceback), no model saved into the output folder."""
    from simple_rlhf.cli.main import main

    model_flag = "--actor-model-name-or-path" if command == "ppo" else "--model-name-or-path"
    out = tmp_path / "out"
    flags = [model_flag, str(nan_model), "--output-dir", str(out), "--no-progress-bar"]
    flags += ["--report-to", "none", "--gold-eval-prompts", "0", "--max-steps", "6", *extra]
    if command in ("sft", "dpo"):
        flags += ["--max-eval-samples", "4", "--per-device-train-batch-size", "2"]
    else:
        flags += ["--max-new-tokens", "4", "--prompts-per-rollout", "8"]
    capsys.readouterr()
    assert main([command, *flags]) == 2
    err = capsys.readouterr().err
    assert f"simple-rlhf {command}: error:" in err and "Traceback" not in err
    assert "diverged" in err and "--learning-rate" in err
    assert not (out / "model.safetensors").exists()
