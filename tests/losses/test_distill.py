"""Tests for losses/distill.py: generalised JSD (GKD) on a 3-token vocabulary, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from simple_rlhf.losses.distill import forward_kl, generalized_jsd, reverse_kl, topk_logits

NAN = float("nan")
P_T = [0.5, 0.25, 0.25]  # teacher
P_S = [0.2, 0.6, 0.2]  # student


def _logits(p: list[float], requires_grad: bool = False) -> torch.Tensor:
    """[1, 1, V] logits whose softmax is p (log p up to a constant)."""
    x = torch.log(torch.tensor([[p]], dtype=torch.float64)) + 1.7
    return x.requires_grad_(requires_grad)


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


MASK = torch.ones(1, 1)


def test_forward_kl_beta0_by_hand() -> None:
    """beta 0 -> KL(p_T || p_S) = 0.5 ln(0.5/0.2) + 0.25 ln(0.25/0.6) + 0.25 ln(0.25/0.2)
    = 0.4581454 - 0.2188673 + 0.0557859 = 0.2950640.
    Gradient w.r.t. student logits = p_S - p_T = [-0.3, 0.35, -0.05]."""
    s = _logits(P_S, requires_grad=True)
    loss, m = generalized_jsd(s, _logits(P_T), MASK, beta=0.0)
    assert loss.item() == pytest.approx(0.2950640, rel=1e-5)
    assert loss.item() == pytest.approx(_kl(P_T, P_S), rel=1e-9)
    assert m["distill/loss"].item() == pytest.approx(0.2950640, rel=1e-5)
    loss.backward()
    torch.testing.assert_close(
        s.grad, torch.tensor([[[-0.3, 0.35, -0.05]]], dtype=torch.float64), rtol=1e-5, atol=1e-9
    )
    fwd, _ = forward_kl(s, _logits(P_T), MASK)
    assert fwd.item() == loss.item()


def test_reverse_kl_beta1_by_hand() -> None:
    """beta 1 -> KL(p_S || p_T) = 0.2 ln(0.2/0.5) + 0.6 ln(0.6/0.25) + 0.2 ln(0.2/0.25)
    = -0.1832581 + 0.5252814 - 0.0446287 = 0.2973946."""
    loss, _ = generalized_jsd(_logits(P_S), _logits(P_T), MASK, beta=1.0)
    assert loss.item() == pytest.approx(0.2973946, rel=1e-5)
    assert loss.item() == pytest.approx(_kl(P_S, P_T), rel=1e-9)
    rev, _ = reverse_kl(_logits(P_S), _logits(P_T), MASK)
    assert rev.item() == loss.item()


def test_jsd_beta_half_by_hand() -> None:
    """beta 0.5: m = 0.5 p_T + 0.5 p_S = [0.35, 0.425, 0.225].
    KL(p_T||m) = 0.5 ln(0.5/0.35) + 0.25 ln(0.25/0.425) + 0.25 ln(0.25/0.225)
               = 0.1783375 - 0.1326570 + 0.0263401 = 0.0720206
    KL(p_S||m) = 0.2 ln(0.2/0.35) + 0.6 ln(0.6/0.425) + 0.2 ln(0.2/0.225)
               = -0.1119232 + 0.2069042 - 0.0235566 = 0.0714244
    JSD = 0.5 * 0.0720206 + 0.5 * 0.0714244 = 0.0717225."""
    loss, _ = generalized_jsd(_logits(P_S), _logits(P_T), MASK, beta=0.5)
    assert loss.item() == pytest.approx(0.0717225, rel=1e-5)


def test_jsd_beta_asymmetric_mixture_weights() -> None:
    """beta 0.9: m = 0.9 p_T + 0.1 p_S; JSD = 0.9 KL(p_T||m) + 0.1 KL(p_S||m) (checked against the
    formula in plain python) -- pins which distribution gets beta."""
    beta = 0.9
    m = [beta * a + (1 - beta) * b for a, b in zip(P_T, P_S, strict=True)]
    expected = beta * _kl(P_T, m) + (1 - beta) * _kl(P_S, m)
    loss, _ = generalized_jsd(_logits(P_S), _logits(P_T), MASK, beta=beta)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_identical_distributions_give_zero(beta) -> None:
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss, _ = generalized_jsd(logits, logits.clone(), torch.ones(2, 3), beta=beta)
    assert abs(loss.item()) < 1e-12


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_gradients_finite_at_endpoints(beta) -> None:
    """Sharp, very different distributions (logits +-30) and float32: finite, non-zero grads."""
    s = torch.tensor([[[30.0, -30.0, 0.0]]], requires_grad=True)
    t = torch.tensor([[[-30.0, 30.0, 0.0]]])
    loss, _ = generalized_jsd(s, t, MASK, beta=beta)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_teacher_zero_probability_is_handled(beta) -> None:
    """A teacher logit of -inf (p_T = 0) contributes 0 * log 0 = 0, not NaN.
    beta 0: p_T = [2/3, 1/3, 0] vs p_S uniform: KL = 2/3 ln 2 + 1/3 ln 1 = 0.4620981."""
    s = torch.zeros(1, 1, 3, requires_grad=True)
    t = torch.tensor([[[math.log(2.0), 0.0, -math.inf]]])
    loss, _ = generalized_jsd(s, t, MASK, beta=beta)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    if beta == 0.0:
        assert loss.item() == pytest.approx(2 / 3 * math.log(2.0), rel=1e-5)


def test_temperature_divides_both_logits() -> None:
    """Logits scaled by 2 with temperature 2 give back the beta-0.5 value 0.0717225."""
    loss, _ = generalized_jsd(2 * _logits(P_S), 2 * _logits(P_T), MASK, beta=0.5, temperature=2.0)
    assert loss.item() == pytest.approx(0.0717225, rel=1e-5)


def test_top_k_renormalises_on_teacher_support() -> None:
    """V = 4, teacher p = [0.4, 0.1, 0.3, 0.2] -> top-2 ids [0, 2], renormalised [4/7, 3/7];
    student p = [0.1, 0.2, 0.3, 0.4] gathered at [0, 2] -> [0.1, 0.3] -> [0.25, 0.75].
    forward KL = 4/7 ln((4/7)/0.25) + 3/7 ln((3/7)/0.75) = 0.4723882 - 0.2398355 = 0.2325527.
    topk_mass = 0.4 + 0.3 = 0.7. Precomputed (values, indices) give the same loss."""
    t = torch.log(torch.tensor([[[0.4, 0.1, 0.3, 0.2]]], dtype=torch.float64))
    s = torch.log(torch.tensor([[[0.1, 0.2, 0.3, 0.4]]], dtype=torch.float64))
    loss, m = generalized_jsd(s, t, MASK, beta=0.0, top_k=2)
    assert loss.item() == pytest.approx(0.2325527, rel=1e-5)
    assert m["distill/topk_mass"].item() == pytest.approx(0.7, rel=1e-5)
    values, indices = topk_logits(t, 2)
    assert indices.tolist() == [[[0, 2]]]
    pre, _ = generalized_jsd(s, values, MASK, beta=0.0, teacher_indices=indices)
    assert pre.item() == pytest.approx(loss.item(), rel=1e-12)
    with pytest.raises(ValueError):
        topk_logits(t, 5)


def test_masked_positions_never_matter() -> None:
    """Two positions, the second masked and full of NaN (student, teacher and indices garbage):
    the loss equals the first position's, and the student's gradient there is finite and 0."""
    s = torch.cat([_logits(P_S), torch.full((1, 1, 3), NAN, dtype=torch.float64)], dim=1)
    s.requires_grad_(True)
    t = torch.cat([_logits(P_T), torch.full((1, 1, 3), NAN, dtype=torch.float64)], dim=1)
    mask = torch.tensor([[1, 0]])
    for beta in (0.0, 0.5, 1.0):
        s.grad = None
        loss, _ = generalized_jsd(s, t, mask, beta=beta)
        alone, _ = generalized_jsd(_logits(P_S), _logits(P_T), MASK, beta=beta)
        assert loss.item() == pytest.approx(alone.item(), rel=1e-12)
        loss.backward()
        assert torch.isfinite(s.grad).all() and torch.all(s.grad[0, 1] == 0)
    indices = torch.tensor([[[0, 2], [10**6, -5]]])  # out-of-range ids at the masked position
    loss, _ = generalized_jsd(s, t[..., :2], mask, beta=0.0, teacher_indices=indices)
    assert torch.isfinite(loss)


def test_invalid_arguments() -> None:
    s, t = _logits(P_S), _logits(P_T)
    with pytest.raises(ValueError):
        generalized_jsd(s, t, MASK, beta=1.5)
    with pytest.raises(ValueError):
        generalized_jsd(s, t, MASK, temperature=0.0)
    with pytest.raises(ValueError):
        generalized_jsd(s, t, MASK, top_k=2, teacher_indices=torch.zeros(1, 1, 2, dtype=torch.long))
