"""Tests for losses/kl.py: the four per-token KL estimators and the KL controllers."""

from __future__ import annotations

import math

import pytest
import torch

from simple_rlhf.losses.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_penalty,
)

LN2 = math.log(2.0)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """pi = [0.5, 0.2], pi_ref = [0.25, 0.4] for the sampled tokens (one row, two tokens)."""
    logp = torch.tensor([[math.log(0.5), math.log(0.2)]], dtype=torch.float64)
    ref = torch.tensor([[math.log(0.25), math.log(0.4)]], dtype=torch.float64)
    return logp, ref


def test_k1() -> None:
    """k1 = logp - logp_ref = [ln(0.5/0.25), ln(0.2/0.4)] = [ln2, -ln2]."""
    logp, ref = _inputs()
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([[LN2, -LN2]]).double())


def test_k2() -> None:
    """k2 = 1/2 (logp - logp_ref)^2 = [1/2 ln2^2, 1/2 ln2^2] = [0.2402265, 0.2402265]."""
    logp, ref = _inputs()
    expected = torch.tensor([[0.5 * LN2**2, 0.5 * LN2**2]], dtype=torch.float64)
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), expected, rtol=1e-5, atol=0)
    assert kl_penalty(logp, ref, "k2")[0, 0].item() == pytest.approx(0.2402265, rel=1e-5)


def test_k3() -> None:
    """x = logp_ref - logp = [-ln2, ln2]; k3 = e^x - x - 1 = [0.5 + ln2 - 1, 2 - ln2 - 1]
    = [0.1931472, 0.3068528]."""
    logp, ref = _inputs()
    expected = torch.tensor([[0.1931472, 0.3068528]], dtype=torch.float64)
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), expected, rtol=1e-5, atol=0)


def test_abs() -> None:
    """|logp - logp_ref| = [ln2, ln2]."""
    logp, ref = _inputs()
    torch.testing.assert_close(kl_penalty(logp, ref, "abs"), torch.tensor([[LN2, LN2]]).double())


def test_k3_clamp_value_and_finite_gradient() -> None:
    """logp = -5, ref = 0: x = 5, k3 = e^5 - 6 = 142.413 -> clamped to 10.
    logp = -100: unclamped k3 = e^100 - 101 overflows fp32 (inf); with clamp the log-ratio is
    bounded to 20 first, the output is 10 and the gradient is finite (zero: clamped)."""
    logp = torch.tensor([[-5.0, -100.0, math.log(0.5)]], requires_grad=True)
    ref = torch.tensor([[0.0, 0.0, math.log(0.25)]])
    kl = kl_penalty(logp, ref, "k3", clamp=10.0)
    torch.testing.assert_close(kl[0, :2], torch.tensor([10.0, 10.0]))
    assert kl[0, 2].item() == pytest.approx(0.1931472, rel=1e-5)  # untouched when small
    assert torch.isinf(kl_penalty(logp.detach(), ref, "k3")[0, 1])
    kl.sum().backward()
    assert torch.isfinite(logp.grad).all()
    torch.testing.assert_close(logp.grad[0, :2], torch.zeros(2))
    # d k3 / d logp = 1 - e^x = 1 - 0.5 = 0.5 at the unclamped token.
    assert logp.grad[0, 2].item() == pytest.approx(0.5, rel=1e-5)


def test_unknown_estimator_lists_names() -> None:
    logp, ref = _inputs()
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(logp, ref, "k4")
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3", "abs"}


def test_fixed_controller() -> None:
    ctl = FixedKLController(0.05)
    ctl.update(current_kl=100.0, n_steps=1000)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


def test_adaptive_controller_by_hand() -> None:
    """init 0.1, target 6, horizon 10000.
    update(kl=9, n=256): e = clip(9/6 - 1 = 0.5) = 0.2; beta = 0.1 * (1 + 0.2*256/10000)
      = 0.1 * 1.00512 = 0.100512.
    update(kl=5.7, n=512): e = 5.7/6 - 1 = -0.05; beta = 0.100512 * (1 - 0.05*512/10000)
      = 0.100512 * 0.99744 = 0.1002546893.
    update(kl=0, n=10000): e = clip(-1) = -0.2; beta = 0.1002546893 * 0.8 = 0.0802037514."""
    ctl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_steps=256)
    assert ctl.value == pytest.approx(0.100512, rel=1e-9)
    ctl.update(current_kl=5.7, n_steps=512)
    assert ctl.value == pytest.approx(0.1002546893, rel=1e-9)
    ctl.update(current_kl=0.0, n_steps=10000)
    assert ctl.value == pytest.approx(0.0802037514, rel=1e-9)

    resumed = AdaptiveKLController(init_coef=1.0, target=1.0, horizon=1)
    resumed.load_state_dict(ctl.state_dict())
    assert (resumed.value, resumed.target, resumed.horizon) == (ctl.value, 6.0, 10000)


def test_adaptive_controller_rejects_bad_args() -> None:
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=1.0, horizon=0)
