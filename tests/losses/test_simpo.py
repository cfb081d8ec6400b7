"""Tests for the SimPO loss.

Shared inputs: average log-probs chosen [-0.5, -1.0], rejected [-1.0, -0.8]; β = 2, γ = 0.5.
z = β(a_c - a_r) - γ = [2·0.5 - 0.5, 2·(-0.2) - 0.5] = [0.5, -0.9].
"""

import math

import pytest
import torch

from simple_rlhf.losses.dpo import dpo_loss
from simple_rlhf.losses.simpo import simpo_loss

AC = torch.tensor([-0.5, -1.0])
AR = torch.tensor([-1.0, -0.8])


def nls(x: float) -> float:
    """-log σ(x)."""
    return math.log1p(math.exp(-x))


def test_hand_value_and_metrics():
    """loss = (-logσ(0.5) - logσ(-0.9)) / 2 = (0.474077 + 1.241154) / 2 = 0.857615.
    rewards βa: chosen mean(-1, -2) = -1.5, rejected mean(-2, -1.6) = -1.8; margin 0.3;
    accuracy 1/2."""
    loss, m = simpo_loss(AC, AR, beta=2.0, gamma=0.5)
    expected = (nls(0.5) + nls(-0.9)) / 2
    assert expected == pytest.approx(0.857615, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert m["rewards/chosen"].item() == pytest.approx(-1.5, rel=1e-5)
    assert m["rewards/rejected"].item() == pytest.approx(-1.8, rel=1e-5)
    assert m["rewards/margin"].item() == pytest.approx(0.3, rel=1e-5)
    assert m["rewards/accuracy"].item() == pytest.approx(0.5, rel=1e-6)
    assert m["logps/chosen"].item() == pytest.approx(-0.75, rel=1e-6)
    assert all(not v.requires_grad for v in m.values())


def test_label_smoothing():
    """ε = 0.1: 0.9·(-logσ(z)) + 0.1·(-logσ(-z)).
    pair 1: 0.9·0.474077 + 0.1·0.974077 = 0.524077; pair 2: 0.9·1.241154 + 0.1·0.341154
    = 1.151154; mean = 0.837615."""
    loss, _ = simpo_loss(AC, AR, beta=2.0, gamma=0.5, label_smoothing=0.1)
    expected = (0.9 * nls(0.5) + 0.1 * nls(-0.5) + 0.9 * nls(-0.9) + 0.1 * nls(0.9)) / 2
    assert expected == pytest.approx(0.837615, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_gamma_is_absolute_margin():
    """γ = 0 reduces to reference-free sigmoid DPO on average log-probs with the same β."""
    loss0, _ = simpo_loss(AC, AR, beta=2.0, gamma=0.0)
    dpo, _ = dpo_loss(AC, AR, None, None, beta=2.0, reference_free=True)
    assert loss0.item() == pytest.approx(dpo.item(), rel=1e-6)
    # a larger γ asks for a larger margin, so the loss grows
    loss1, _ = simpo_loss(AC, AR, beta=2.0, gamma=1.0)
    assert loss1.item() > loss0.item()


def test_gradient_signs():
    ac = AC.clone().requires_grad_(True)
    ar = AR.clone().requires_grad_(True)
    loss, _ = simpo_loss(ac, ar)
    loss.backward()
    assert torch.all(ac.grad < 0) and torch.all(ar.grad > 0)
