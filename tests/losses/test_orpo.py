"""Tests for the ORPO loss and its log-odds helper."""

import math

import pytest
import torch

from simple_rlhf.losses.orpo import log_odds, orpo_loss


def test_hand_value_and_metrics():
    """Pair 1: P_c = 0.5 -> odds 1, log odds 0; P_r = 0.2 -> odds 0.25, log odds -ln4.
    ratio = ln4; -logσ(ln4) = ln(1 + 1/4) = 0.223144.
    Pair 2: P_c = P_r = 0.8 -> ratio 0; -logσ(0) = ln2 = 0.693147.
    nll = mean(0.5, 1.5) = 1.0; λ = 0.1: loss = 1.0 + 0.1·(0.223144 + 0.693147)/2 = 1.045815.
    log_odds_ratio = (ln4 + 0)/2 = ln2; log_odds_chosen = (0 + ln4)/2 = ln2."""
    ac = torch.tensor([math.log(0.5), math.log(0.8)])
    ar = torch.tensor([math.log(0.2), math.log(0.8)])
    loss, m = orpo_loss(ac, ar, torch.tensor([0.5, 1.5]), lam=0.1)
    expected = 1.0 + 0.1 * (math.log(1.25) + math.log(2.0)) / 2
    assert expected == pytest.approx(1.045815, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert m["log_odds_ratio"].item() == pytest.approx(math.log(2.0), rel=1e-5)
    assert m["log_odds_chosen"].item() == pytest.approx(math.log(2.0), rel=1e-5)
    assert m["nll"].item() == pytest.approx(1.0, rel=1e-6)
    assert m["or_loss"].item() == pytest.approx((math.log(1.25) + math.log(2.0)) / 2, rel=1e-5)
    assert all(not v.requires_grad for v in m.values())


def test_log_odds_accuracy_over_range():
    """log odds = a - log(1 - e^a), checked in float64 against math at both ends:
    a = -50: ≈ -50 + e^-50; a = -1e-4: ≈ -1e-4 - ln(1 - e^-1e-4) = 9.210290."""
    a = torch.tensor([-50.0, -3.0, -0.5, -1e-4], dtype=torch.float64)
    expected = [x - math.log(-math.expm1(x)) for x in a.tolist()]
    assert expected[3] == pytest.approx(9.210290, rel=1e-5)
    torch.testing.assert_close(log_odds(a), torch.tensor(expected, dtype=torch.float64))


def test_probability_one_stays_finite():
    ac = torch.tensor([0.0, -0.1], requires_grad=True)
    ar = torch.tensor([-1.0, -2.0], requires_grad=True)
    loss, _ = orpo_loss(ac, ar, -ac)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(ac.grad).all() and torch.isfinite(ar.grad).all()


def test_gradient_signs():
    ac = torch.tensor([-0.7, -1.2], requires_grad=True)
    ar = torch.tensor([-0.9, -1.0], requires_grad=True)
    loss, _ = orpo_loss(ac, ar, -ac, lam=0.5)
    loss.backward()
    assert torch.all(ac.grad < 0) and torch.all(ar.grad > 0)
