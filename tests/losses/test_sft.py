"""Tests for the SFT (NLL) loss."""

import pytest
import torch

from simple_rlhf.losses.sft import sft_loss

MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_token_mean_hand_value():
    """lp = [[-1, -2, *], [-3, *, *]]: NLL = (1 + 2 + 3) / 3 = 2.0, 3 tokens."""
    lp = torch.tensor([[-1.0, -2.0, -5.0], [-3.0, -7.0, -9.0]])
    loss, metrics = sft_loss(lp, MASK)
    assert loss.item() == pytest.approx(2.0, rel=1e-6)
    assert metrics["nll"].item() == pytest.approx(2.0, rel=1e-6)
    assert metrics["num_tokens"].item() == 3


def test_seq_mean_token_mean_hand_value():
    """Per sequence: (1 + 2)/2 = 1.5 and 3/1 = 3; mean = 2.25. The nll metric stays 2.0."""
    lp = torch.tensor([[-1.0, -2.0, -5.0], [-3.0, -7.0, -9.0]])
    loss, metrics = sft_loss(lp, MASK, aggregation="seq_mean_token_mean")
    assert loss.item() == pytest.approx(2.25, rel=1e-6)
    assert metrics["nll"].item() == pytest.approx(2.0, rel=1e-6)


def test_seq_mean_token_sum_norm_uses_constant():
    """Sum of NLL = 6; divided by B * C = 2 * 4 -> 0.75."""
    lp = torch.tensor([[-1.0, -2.0, -5.0], [-3.0, -7.0, -9.0]])
    loss, _ = sft_loss(lp, MASK, aggregation="seq_mean_token_sum_norm", constant=4.0)
    assert loss.item() == pytest.approx(0.75, rel=1e-6)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_masked_garbage_changes_nothing(aggregation):
    clean = torch.tensor([[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0]], requires_grad=True)
    dirty = torch.tensor(
        [[-1.0, -2.0, float("nan")], [-3.0, float("-inf"), 1e9]], requires_grad=True
    )
    loss_clean, m_clean = sft_loss(clean, MASK, aggregation)
    loss_dirty, m_dirty = sft_loss(dirty, MASK, aggregation)
    assert loss_dirty.item() == loss_clean.item()
    assert m_dirty["nll"].item() == m_clean["nll"].item()
    loss_dirty.backward()
    assert torch.isfinite(dirty.grad).all()
    assert torch.all(dirty.grad[MASK == 0] == 0)
    assert torch.all(dirty.grad[MASK == 1] < 0)  # descent raises the log-prob of targets


def test_metrics_are_detached():
    lp = torch.tensor([[-1.0, -2.0, -5.0]], requires_grad=True)
    loss, metrics = sft_loss(lp, torch.ones(1, 3))
    assert loss.requires_grad
    assert all(not v.requires_grad for v in metrics.values())


def test_unknown_aggregation_lists_valid_names():
    with pytest.raises(ValueError, match="token_mean"):
        sft_loss(torch.zeros(1, 2), torch.ones(1, 2), aggregation="bogus")
