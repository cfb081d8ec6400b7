"""Tests for losses/ppo.py: clipped policy loss (clip-higher, dual-clip), clipped value loss,
explained variance; every number worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from simple_rlhf.losses.ppo import explained_variance, policy_loss, value_loss

NAN = float("nan")


def _policy_inputs(ratios, advantages, mask=None):
    """old_logprobs = 0 and logprobs = ln(ratio), so exp(logp - old) is exactly the ratio."""
    logp = torch.log(torch.tensor([ratios], dtype=torch.float64)).requires_grad_(True)
    old = torch.zeros_like(logp)
    adv = torch.tensor([advantages], dtype=torch.float64)
    mask = torch.ones_like(adv) if mask is None else torch.tensor([mask], dtype=torch.float64)
    return logp, old, adv, mask


def test_policy_loss_clipped_and_unclipped_regions() -> None:
    """eps = 0.2, range [0.8, 1.2]; l = max(-A*rho, -A*clip(rho)):
    A=+2 rho=1.1: max(-2.2, -2.2) = -2.2   (inside)
    A=+2 rho=1.5: max(-3.0, -2.4) = -2.4   (clipped, gradient cut)
    A=+2 rho=0.5: max(-1.0, -1.6) = -1.0   (unclipped: pessimistic branch)
    A=-1 rho=0.5: max( 0.5,  0.8) =  0.8   (clipped, gradient cut)
    A=-1 rho=1.5: max( 1.5,  1.2) =  1.5   (unclipped)
    A=-1 rho=0.9: max( 0.9,  0.9) =  0.9   (inside)
    token_mean = (-2.2 - 2.4 - 1.0 + 0.8 + 1.5 + 0.9) / 6 = -2.4 / 6 = -0.4; clipfrac 2/6.
    ratio_mean = (1.1 + 1.5 + 0.5 + 0.5 + 1.5 + 0.9) / 6 = 1.0; ratio_max = 1.5.
    approx_kl = mean 1/2 ln(rho)^2 = 1/2 (0.0090840 + 0.1644019 + 0.4804530 + 0.4804530 + 0.1644019
    + 0.0111008) / 6 = 0.1091579.
    d loss / d logp_t = -A*rho/6 where unclipped, 0 where clipped:
    [-0.3666667, 0, -0.1666667, 0, 0.25, 0.15]."""
    logp, old, adv, mask = _policy_inputs([1.1, 1.5, 0.5, 0.5, 1.5, 0.9], [2, 2, 2, -1, -1, -1])
    loss, m = policy_loss(logp, old, adv, mask)
    assert loss.item() == pytest.approx(-0.4, rel=1e-5)
    assert m["policy/loss"].item() == pytest.approx(-0.4, rel=1e-5)
    assert m["policy/clipfrac"].item() == pytest.approx(2 / 6, rel=1e-5)
    assert m["policy/ratio_mean"].item() == pytest.approx(1.0, rel=1e-5)
    assert m["policy/ratio_max"].item() == pytest.approx(1.5, rel=1e-5)
    assert m["policy/approx_kl"].item() == pytest.approx(0.1091579, rel=1e-5)
    assert all(not v.requires_grad for v in m.values())
    loss.backward()
    expected = torch.tensor([[-2.2 / 6, 0.0, -1.0 / 6, 0.0, 1.5 / 6, 0.9 / 6]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected, rtol=1e-5, atol=1e-12)


def test_policy_loss_clip_higher() -> None:
    """clip_low 0.2, clip_high 0.28, A = +2:
    rho 1.25: symmetric eps 0.2 -> max(-2.5, -2.4) = -2.4 (clipped); clip-higher -> -2.5 (inside)
    rho 1.5:  clip-higher -> max(-3.0, -2*1.28 = -2.56) = -2.56
    rho 0.7:  lower bound unchanged -> max(-1.4, -1.6) = -1.4
    means: symmetric (-2.4 - 2.4 - 1.4)/3 = -2.0666667; clip-higher (-2.5 - 2.56 - 1.4)/3
    = -2.1533333."""
    logp, old, adv, mask = _policy_inputs([1.25, 1.5, 0.7], [2, 2, 2])
    sym, m_sym = policy_loss(logp, old, adv, mask)
    high, m_high = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert sym.item() == pytest.approx(-6.2 / 3, rel=1e-5)
    assert high.item() == pytest.approx(-6.46 / 3, rel=1e-5)
    assert m_sym["policy/clipfrac"].item() == pytest.approx(2 / 3, rel=1e-5)
    assert m_high["policy/clipfrac"].item() == pytest.approx(1 / 3, rel=1e-5)


def test_policy_loss_dual_clip() -> None:
    """c = 3:
    A=-1 rho=5: PPO max(5, 1.2) = 5 -> dual min(5, 3) = 3 (gradient cut)
    A=-1 rho=2: max(2, 1.2) = 2 -> min(2, 3) = 2
    A=+1 rho=5: max(-5, -1.2) = -1.2 (dual clip only touches A < 0)
    without dual clip: (5 + 2 - 1.2)/3 = 1.9333333; with: (3 + 2 - 1.2)/3 = 1.2666667;
    dual_clipfrac 1/3. Gradients with dual clip: [0, 1*2/3, 0]."""
    logp, old, adv, mask = _policy_inputs([5.0, 2.0, 5.0], [-1, -1, 1])
    plain, _ = policy_loss(logp, old, adv, mask)
    assert plain.item() == pytest.approx(5.8 / 3, rel=1e-5)
    loss, m = policy_loss(logp, old, adv, mask, dual_clip=3.0)
    assert loss.item() == pytest.approx(3.8 / 3, rel=1e-5)
    assert m["policy/dual_clipfrac"].item() == pytest.approx(1 / 3, rel=1e-5)
    loss.backward()
    torch.testing.assert_close(
        logp.grad, torch.tensor([[0.0, 2.0 / 3, 0.0]], dtype=torch.float64), rtol=1e-5, atol=1e-12
    )
    with pytest.raises(ValueError):
        policy_loss(logp, old, adv, mask, dual_clip=1.0)


def test_policy_loss_aggregation_is_forwarded() -> None:
    """per-token losses (eps 0.2, A = 2): row0 rho [1.1, 1.5] -> [-2.2, -2.4]; row1 rho [0.5, pad]
    -> [-1.0]. token_mean = -5.6/3 = -1.8666667; seq_mean_token_mean = (-2.3 + -1.0)/2 = -1.65;
    seq_mean_token_sum = (-4.6 - 1.0)/2 = -2.8; seq_mean_token_sum_norm (C=4) = -5.6/(2*4) = -0.7."""
    logp = torch.log(torch.tensor([[1.1, 1.5], [0.5, 1.0]]))
    old = torch.zeros(2, 2)
    adv = torch.full((2, 2), 2.0)
    mask = torch.tensor([[1, 1], [1, 0]])
    expected = {
        "token_mean": -5.6 / 3,
        "seq_mean_token_mean": -1.65,
        "seq_mean_token_sum": -2.8,
    }
    for mode, value in expected.items():
        loss, _ = policy_loss(logp, old, adv, mask, aggregation=mode)
        assert loss.item() == pytest.approx(value, rel=1e-5)
    loss, _ = policy_loss(
        logp, old, adv, mask, aggregation="seq_mean_token_sum_norm", agg_constant=4
    )
    assert loss.item() == pytest.approx(-0.7, rel=1e-5)


def test_policy_loss_ignores_masked_garbage() -> None:
    """NaN / huge values at masked positions change neither loss, metrics nor real gradients, and
    the gradient there is exactly 0."""
    logp, old, adv, mask = _policy_inputs([1.1, 1.5, 0.5], [2, 2, -1])
    ref_loss, ref_m = policy_loss(logp, old, adv, mask, dual_clip=3.0)
    ref_loss.backward()

    bad_logp = torch.tensor(
        [[math.log(1.1), NAN, math.log(1.5), 50.0, math.log(0.5)]],
        dtype=torch.float64,
        requires_grad=True,
    )
    bad_old = torch.tensor([[0.0, NAN, 0.0, -50.0, 0.0]], dtype=torch.float64)
    bad_adv = torch.tensor([[2.0, NAN, 2.0, 1e9, -1.0]], dtype=torch.float64)
    bad_mask = torch.tensor([[1, 0, 1, 0, 1]])
    loss, m = policy_loss(bad_logp, bad_old, bad_adv, bad_mask, dual_clip=3.0)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    for key, value in ref_m.items():
        assert m[key].item() == pytest.approx(value.item(), rel=1e-12), key
    loss.backward()
    torch.testing.assert_close(bad_logp.grad[0, [0, 2, 4]], logp.grad[0])
    assert bad_logp.grad[0, 1].item() == 0.0 and bad_logp.grad[0, 3].item() == 0.0


def test_value_loss_by_hand() -> None:
    """eps 0.2; v_clip = v_old + clip(v - v_old, +-0.2); l = 1/2 max((v-R)^2, (v_clip-R)^2):
    v=1.0 old=0.9 R=1.5: v_clip = 1.0; 1/2 * 0.25 = 0.125 (not clipped)
    v=1.5 old=1.0 R=2.0: v_clip = 1.2; max(0.25, 0.64) -> 0.32 (clipped)
    v=1.5 old=1.0 R=1.0: v_clip = 1.2; max(0.25, 0.04) -> 0.125 (not clipped)
    mean = 0.57/3 = 0.19; clipfrac 1/3; values_mean 4/3.
    clip_range None: 1/2 (0.25 + 0.25 + 0.25)/3 = 0.125.
    grads (clipped): d/dv = (v - R)/3 where unclipped, 0 where clipped: [-0.5/3, 0, 0.5/3]."""
    v = torch.tensor([[1.0, 1.5, 1.5, NAN]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[0.9, 1.0, 1.0, NAN]], dtype=torch.float64)
    ret = torch.tensor([[1.5, 2.0, 1.0, NAN]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, m = value_loss(v, old, ret, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(0.19, rel=1e-5)
    assert m["critic/value_loss"].item() == pytest.approx(0.19, rel=1e-5)
    assert m["critic/clipfrac"].item() == pytest.approx(1 / 3, rel=1e-5)
    assert m["critic/values_mean"].item() == pytest.approx(4 / 3, rel=1e-5)
    loss.backward()
    torch.testing.assert_close(
        v.grad, torch.tensor([[-0.5 / 3, 0.0, 0.5 / 3, 0.0]], dtype=torch.float64)
    )
    unclipped, m2 = value_loss(v, old, ret, mask, clip_range=None)
    assert unclipped.item() == pytest.approx(0.125, rel=1e-5)
    assert m2["critic/clipfrac"].item() == 0.0


def test_explained_variance_by_hand() -> None:
    """R = [1, 2, 3], V = [1, 2, 2]: residual [0, 0, 1], unbiased var 1/3; Var[R] = 1
    -> 1 - 1/3 = 0.6666667. V = R -> 1. Constant R -> 0 (defined, not NaN). Masked NaN ignored."""
    ret = torch.tensor([[1.0, 2.0, 3.0, NAN]])
    mask = torch.tensor([[1, 1, 1, 0]])
    ev = explained_variance(torch.tensor([[1.0, 2.0, 2.0, NAN]]), ret, mask)
    assert ev.item() == pytest.approx(2 / 3, rel=1e-5)
    assert explained_variance(ret, ret, mask).item() == pytest.approx(1.0, rel=1e-6)
    const = torch.ones(1, 3)
    assert explained_variance(torch.zeros(1, 3), const, torch.ones(1, 3)).item() == 0.0
