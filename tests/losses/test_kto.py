"""Tests for the KTO loss and its reference point.

Shared inputs (β = 0.1): policy [-1, -2, -1.5], ref [-1.5, -1.5, -1.5] -> ρ = [0.5, -0.5, 0.0],
labels [desirable, undesirable, desirable].
"""

import math

import pytest
import torch

from simple_rlhf.losses.kto import kto_loss, kto_reference_point

POLICY = torch.tensor([-1.0, -2.0, -1.5])
REF = torch.tensor([-1.5, -1.5, -1.5])
LABELS = torch.tensor([True, False, True])


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_hand_value():
    """z0 = 0.2.
    desirable ρ = 0.5:   1 - σ(0.1·(0.5 - 0.2)) = 1 - σ(0.03) = 0.492501
    undesirable ρ = -0.5: 1 - σ(0.1·(0.2 + 0.5)) = 1 - σ(0.07) = 0.482507
    desirable ρ = 0:     1 - σ(0.1·(0 - 0.2)) = 1 - σ(-0.02) = 0.505000
    mean = 0.493336."""
    loss, m = kto_loss(POLICY, REF, LABELS, torch.tensor(0.2), beta=0.1)
    expected = ((1 - sig(0.03)) + (1 - sig(0.07)) + (1 - sig(-0.02))) / 3
    assert expected == pytest.approx(0.493336, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # rewards βρ: desirable mean(0.05, 0) = 0.025, undesirable -0.05; kl = z0 = 0.2
    assert m["rewards/chosen"].item() == pytest.approx(0.025, rel=1e-5)
    assert m["rewards/rejected"].item() == pytest.approx(-0.05, rel=1e-5)
    assert m["kl"].item() == pytest.approx(0.2, rel=1e-5)
    assert all(not v.requires_grad for v in m.values())


def test_class_weights():
    """λ_U = 2: (0.492501 + 2·0.482507 + 0.505000) / 3 = 0.654172."""
    loss, _ = kto_loss(POLICY, REF, LABELS, 0.2, beta=0.1, undesirable_weight=2.0)
    expected = ((1 - sig(0.03)) + 2 * (1 - sig(0.07)) + (1 - sig(-0.02))) / 3
    assert expected == pytest.approx(0.654172, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_negative_reference_point_is_clamped_to_zero():
    """z0 = max(0, -0.3) = 0: 1 - σ(0.05) = 0.487503 (twice), 1 - σ(0) = 0.5; mean = 0.491668."""
    loss, m = kto_loss(POLICY, REF, LABELS, torch.tensor(-0.3), beta=0.1)
    expected = (2 * (1 - sig(0.05)) + 0.5) / 3
    assert expected == pytest.approx(0.491668, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert m["kl"].item() == 0.0


def test_no_gradient_through_reference_point_and_signs():
    p = POLICY.clone().requires_grad_(True)
    z0 = torch.tensor(0.2, requires_grad=True)
    loss, _ = kto_loss(p, REF, LABELS, z0, beta=0.1)
    loss.backward()
    assert z0.grad is None
    assert p.grad[0] < 0 and p.grad[2] < 0  # desirable log-probs go up
    assert p.grad[1] > 0  # undesirable goes down


def test_empty_subset_metric_is_zero():
    _, m = kto_loss(POLICY, REF, torch.ones(3, dtype=torch.bool), 0.0)
    assert m["rewards/rejected"].item() == 0.0


def test_reference_point():
    """diffs [-1 - (-1.5), -2 - (-1.0)] = [0.5, -1.0]: mean -0.25 -> clamped to 0.
    diffs [0.5, 0.1]: mean 0.3."""
    z = kto_reference_point(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0]))
    assert z.item() == 0.0
    p = torch.tensor([-1.0, -1.4], requires_grad=True)
    z = kto_reference_point(p, torch.tensor([-1.5, -1.5]))
    assert z.item() == pytest.approx(0.3, rel=1e-5)
    assert not z.requires_grad
