"""Tests for the CPO loss.

Shared inputs: policy log-probs chosen [-1, -2], rejected [-3, -1.5] -> h = [2, -0.5];
chosen NLL [1, 2] -> mean 1.5.
"""

import math

import pytest
import torch

from simple_rlhf.losses.cpo import CPO_LOSS_TYPES, cpo_loss

CH = torch.tensor([-1.0, -2.0])
RJ = torch.tensor([-3.0, -1.5])
NLL = torch.tensor([1.0, 2.0])


def nls(x: float) -> float:
    """-log σ(x)."""
    return math.log1p(math.exp(-x))


def test_sigmoid_plus_nll():
    """β = 0.1: (-logσ(0.2) - logσ(-0.05)) / 2 + 1·1.5 = (0.598139 + 0.718460)/2 + 1.5 = 2.158299."""
    loss, m = cpo_loss(CH, RJ, NLL, beta=0.1, alpha=1.0)
    expected = (nls(0.2) + nls(-0.05)) / 2 + 1.5
    assert expected == pytest.approx(2.158299, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert m["nll"].item() == pytest.approx(1.5, rel=1e-6)
    assert m["loss/preference"].item() == pytest.approx(expected - 1.5, rel=1e-5)
    # rewards βc: mean(-0.1, -0.2) = -0.15; βr: mean(-0.3, -0.15) = -0.225; accuracy 1/2
    assert m["rewards/chosen"].item() == pytest.approx(-0.15, rel=1e-5)
    assert m["rewards/rejected"].item() == pytest.approx(-0.225, rel=1e-5)
    assert m["rewards/accuracy"].item() == pytest.approx(0.5, rel=1e-6)
    assert all(not v.requires_grad for v in m.values())


def test_hinge():
    """relu(1 - 0.2) = 0.8, relu(1 + 0.05) = 1.05: mean 0.925; α = 0.5: + 0.75 = 1.675."""
    loss, _ = cpo_loss(CH, RJ, NLL, beta=0.1, loss_type="hinge", alpha=0.5)
    assert loss.item() == pytest.approx(1.675, rel=1e-5)


def test_ipo():
    """1/(2β) = 5: (2 - 5)^2 = 9, (-0.5 - 5)^2 = 30.25: mean 19.625; + 1.5 = 21.125."""
    loss, _ = cpo_loss(CH, RJ, NLL, beta=0.1, loss_type="ipo")
    assert loss.item() == pytest.approx(21.125, rel=1e-5)


def test_simpo_type_is_cpo_simpo():
    """β = 2, γ = 0.5 on (average) log-probs: z = [2·2 - 0.5, 2·(-0.5) - 0.5] = [3.5, -1.5];
    (-logσ(3.5) - logσ(-1.5))/2 + 1.5 = (0.029750 + 1.701413)/2 + 1.5 = 2.365582.
    α = 0 drops the NLL: 0.865582."""
    loss, _ = cpo_loss(CH, RJ, NLL, beta=2.0, loss_type="simpo", simpo_gamma=0.5)
    expected = (nls(3.5) + nls(-1.5)) / 2 + 1.5
    assert expected == pytest.approx(2.365582, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss0, _ = cpo_loss(CH, RJ, NLL, beta=2.0, loss_type="simpo", simpo_gamma=0.5, alpha=0.0)
    assert loss0.item() == pytest.approx(expected - 1.5, rel=1e-5)


def test_scalar_nll_accepted():
    loss_vec, _ = cpo_loss(CH, RJ, NLL)
    loss_scalar, _ = cpo_loss(CH, RJ, torch.tensor(1.5))
    assert loss_scalar.item() == pytest.approx(loss_vec.item(), rel=1e-6)


def test_unknown_type_lists_valid_names():
    with pytest.raises(ValueError, match="robust") as err:
        cpo_loss(CH, RJ, NLL, loss_type="robust")  # a DPO type, but not a CPO one
    for name in CPO_LOSS_TYPES:
        assert name in str(err.value)


def test_gradient_signs():
    ch = CH.clone().requires_grad_(True)
    rj = RJ.clone().requires_grad_(True)
    loss, _ = cpo_loss(ch, rj, -ch)  # NLL of the chosen = -logp
    loss.backward()
    assert torch.all(ch.grad < 0) and torch.all(rj.grad > 0)
