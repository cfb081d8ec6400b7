"""Tests for reward-model losses (Bradley–Terry pairwise and DeepSpeed-Chat token-wise)."""

import math

import pytest
import torch

from simple_rlhf.losses.reward import (
    REWARD_LOSS_NAMES,
    dschat_pairwise_loss,
    last_token_values,
    pairwise_loss,
)


def nls(x: float) -> float:
    """-log σ(x) = log(1 + e^{-x})."""
    return math.log1p(math.exp(-x))


CHOSEN = torch.tensor([2.0, 0.5, 1.0])
REJECTED = torch.tensor([1.0, 1.0, 1.0])


def test_names():
    assert REWARD_LOSS_NAMES == ("pairwise", "dschat")


def test_pairwise_hand_value_and_metrics():
    """r_c - r_r = [1, -0.5, 0].

    loss = (-logσ(1) - logσ(-0.5) - logσ(0)) / 3 = (0.313262 + 0.974077 + 0.693147) / 3 = 0.660162.
    accuracy = 1/3 (the tie counts 0); chosen_mean = 3.5/3; rejected_mean = 1; margin_mean = 0.5/3.
    """
    loss, m = pairwise_loss(CHOSEN, REJECTED)
    expected = (nls(1.0) + nls(-0.5) + nls(0.0)) / 3
    assert expected == pytest.approx(0.660162, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert m["accuracy"].item() == pytest.approx(1 / 3, rel=1e-6)
    assert m["chosen_mean"].item() == pytest.approx(3.5 / 3, rel=1e-6)
    assert m["rejected_mean"].item() == pytest.approx(1.0, rel=1e-6)
    assert m["margin_mean"].item() == pytest.approx(0.5 / 3, rel=1e-6)


def test_pairwise_margin():
    """margin = [0.5, 0, 0] -> logits [0.5, -0.5, 0]; loss = (0.474077 + 0.974077 + 0.693147)/3
    = 0.713767."""
    loss, _ = pairwise_loss(CHOSEN, REJECTED, margin=torch.tensor([0.5, 0.0, 0.0]))
    expected = (nls(0.5) + nls(-0.5) + nls(0.0)) / 3
    assert expected == pytest.approx(0.713767, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_pairwise_centering():
    """(r_c + r_r)^2 = [9, 2.25, 4], mean 5.083333; loss = 0.660162 + 0.01 · 5.083333 = 0.710995."""
    loss, _ = pairwise_loss(CHOSEN, REJECTED, center_coef=0.01)
    expected = (nls(1.0) + nls(-0.5) + nls(0.0)) / 3 + 0.01 * (9 + 2.25 + 4) / 3
    assert expected == pytest.approx(0.710995, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_pairwise_gradient_sign_and_detached_metrics():
    c = CHOSEN.clone().requires_grad_(True)
    r = REJECTED.clone().requires_grad_(True)
    loss, m = pairwise_loss(c, r)
    loss.backward()
    assert torch.all(c.grad < 0) and torch.all(r.grad > 0)
    assert all(not v.requires_grad for v in m.values())


# --- DeepSpeed-Chat token-wise loss ----------------------------------------------------------
# Pair 0: chosen ids [5, 6, 7, 8], rejected ids [5, 6, 9]: they diverge at t = 2, end = max(4, 3).
#   chosen values [0.1, 0.2, 0.5, 1.0], rejected values [0.1, 0.2, 0.3].
# Pair 1: identical ids [5, 6, 7]; chosen values end in 0.4, rejected in 0.9.
G = 123.0  # garbage on padding positions: must not matter


def right_padded():
    cv = torch.tensor([[0.1, 0.2, 0.5, 1.0, G], [0.0, 0.0, 0.4, G, G]])
    rv = torch.tensor([[0.1, 0.2, 0.3, -G, G], [0.0, 0.0, 0.9, -G, G]])
    ci = torch.tensor([[5, 6, 7, 8, 0], [5, 6, 7, 0, 0]])
    ri = torch.tensor([[5, 6, 9, 0, 0], [5, 6, 7, 0, 0]])
    cm = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    rm = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    return cv, rv, ci, ri, cm, rm


def left_padded():
    cv = torch.tensor([[G, 0.1, 0.2, 0.5, 1.0], [G, G, 0.0, 0.0, 0.4]])
    rv = torch.tensor([[-G, G, 0.1, 0.2, 0.3], [-G, G, 0.0, 0.0, 0.9]])
    ci = torch.tensor([[0, 5, 6, 7, 8], [0, 0, 5, 6, 7]])
    ri = torch.tensor([[0, 0, 5, 6, 9], [0, 0, 5, 6, 7]])
    cm = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    rm = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 1, 1]])
    return cv, rv, ci, ri, cm, rm


def dschat_expected() -> float:
    """Pair 0: t = 2: c - r = 0.5 - 0.3 = 0.2; t = 3: rejected has ended, its last value 0.3 is
    repeated: 1.0 - 0.3 = 0.7. loss_0 = (-logσ(0.2) - logσ(0.7)) / 2 = (0.598139 + 0.403186)/2
    = 0.500662.
    Pair 1 (identical): last token only, loss_1 = -logσ(0.4 - 0.9) = 0.974077.
    Batch: (0.500662 + 0.974077) / 2 = 0.737370.
    """
    value = ((nls(0.2) + nls(0.7)) / 2 + nls(-0.5)) / 2
    assert value == pytest.approx(0.737370, rel=1e-5)
    return value


@pytest.mark.parametrize("make", [right_padded, left_padded])
def test_dschat_hand_value_left_and_right_padding(make):
    """See dschat_expected(); the padding side must not change the value."""
    cv, rv, ci, ri, cm, rm = make()
    loss, m = dschat_pairwise_loss(cv, rv, ci, ri, cm, rm)
    assert loss.item() == pytest.approx(dschat_expected(), rel=1e-5)
    # scores at the last real token: chosen [1.0, 0.4], rejected [0.3, 0.9]
    assert m["accuracy"].item() == pytest.approx(0.5, rel=1e-6)
    assert m["chosen_mean"].item() == pytest.approx(0.7, rel=1e-6)
    assert m["rejected_mean"].item() == pytest.approx(0.6, rel=1e-6)
    assert m["margin_mean"].item() == pytest.approx(0.1, rel=1e-5)


def test_dschat_padding_gets_no_gradient():
    cv, rv, ci, ri, cm, rm = left_padded()
    cv.requires_grad_(True)
    rv.requires_grad_(True)
    loss, _ = dschat_pairwise_loss(cv, rv, ci, ri, cm, rm)
    loss.backward()
    assert torch.all(cv.grad[cm == 0] == 0) and torch.all(rv.grad[rm == 0] == 0)
    # shared prefix (before divergence) gets no gradient either; divergent part does
    assert cv.grad[0, 1] == 0 and cv.grad[0, 2] == 0
    assert cv.grad[0, 3] < 0 and cv.grad[0, 4] < 0
    assert rv.grad[0, 4] > 0  # repeated last rejected value is used twice


def test_dschat_prefix_sequences():
    """chosen ids [5, 6, 7], rejected ids [5, 6]: no differing id on the common part, so the
    divergence is at t = min(3, 2) = 2 and end = 3. t = 2: c_2 = 0.6, rejected ended at r_1 = 0.3.
    loss = -logσ(0.6 - 0.3) = 0.554355. Different widths T are allowed."""
    cv = torch.tensor([[0.1, 0.2, 0.6]])
    rv = torch.tensor([[0.1, 0.3]])
    loss, _ = dschat_pairwise_loss(
        cv,
        rv,
        torch.tensor([[5, 6, 7]]),
        torch.tensor([[5, 6]]),
        torch.ones(1, 3),
        torch.ones(1, 2),
    )
    assert nls(0.3) == pytest.approx(0.554355, rel=1e-5)
    assert loss.item() == pytest.approx(nls(0.3), rel=1e-5)


def test_last_token_values():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    torch.testing.assert_close(last_token_values(values, mask), torch.tensor([2.0, 6.0]))
