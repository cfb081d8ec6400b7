"""Tests for the DPO loss family, each type against a value worked out by hand.

Shared inputs (β = 0.1):
    policy chosen [-1, -2], ref chosen [-2, -2.5]  -> c = [1.0, 0.5]
    policy rejected [-3, -1.5], ref rejected [-2.5, -1] -> r = [-0.5, -0.5]
    h = c - r = [1.5, 1.0]; βh = [0.15, 0.10]; βc = [0.1, 0.05]; βr = [-0.05, -0.05]
"""

import math

import pytest
import torch

from simple_rlhf.losses.dpo import DPO_LOSSES, dpo_loss

BETA = 0.1
PC = torch.tensor([-1.0, -2.0])
PR = torch.tensor([-3.0, -1.5])
RC = torch.tensor([-2.0, -2.5])
RR = torch.tensor([-2.5, -1.0])
C = [1.0, 0.5]
R = [-0.5, -0.5]
H = [1.5, 1.0]


def nls(x: float) -> float:
    """-log σ(x)."""
    return math.log1p(math.exp(-x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def run(loss_type, **kw):
    loss, metrics = dpo_loss(PC, PR, RC, RR, beta=BETA, loss_type=loss_type, **kw)
    return loss.item(), metrics


def test_sigmoid():
    """-logσ(0.15) = 0.620957, -logσ(0.10) = 0.644397; mean = 0.632677."""
    expected = mean(nls(BETA * h) for h in H)
    assert expected == pytest.approx(0.632677, rel=1e-5)
    assert run("sigmoid")[0] == pytest.approx(expected, rel=1e-5)


def test_sigmoid_label_smoothing_conservative():
    """ε = 0.1: 0.9·(-logσ(βh)) + 0.1·(-logσ(-βh)).
    pair 1: 0.9·0.620957 + 0.1·0.770957 = 0.635957; pair 2: 0.9·0.644397 + 0.1·0.744397 = 0.654397;
    mean = 0.645177."""
    expected = mean(0.9 * nls(BETA * h) + 0.1 * nls(-BETA * h) for h in H)
    assert expected == pytest.approx(0.645177, rel=1e-5)
    assert run("sigmoid", label_smoothing=0.1)[0] == pytest.approx(expected, rel=1e-5)


def test_hinge():
    """relu(1 - 0.15) = 0.85, relu(1 - 0.1) = 0.9; mean = 0.875."""
    assert run("hinge")[0] == pytest.approx(0.875, rel=1e-5)


def test_ipo():
    """1/(2β) = 5: (1.5 - 5)^2 = 12.25, (1 - 5)^2 = 16; mean = 14.125."""
    assert run("ipo")[0] == pytest.approx(14.125, rel=1e-5)


def test_robust():
    """ε = 0.2: ((1-ε)(-logσ(βh)) - ε(-logσ(-βh))) / (1 - 2ε).
    pair 1: (0.8·0.620957 - 0.2·0.770957)/0.6 = 0.570957;
    pair 2: (0.8·0.644397 - 0.2·0.744397)/0.6 = 0.611063; mean = 0.591010."""
    expected = mean((0.8 * nls(BETA * h) - 0.2 * nls(-BETA * h)) / 0.6 for h in H)
    assert expected == pytest.approx(0.591010, rel=1e-5)
    assert run("robust", label_smoothing=0.2)[0] == pytest.approx(expected, rel=1e-5)


def test_robust_rejects_half_label_smoothing():
    with pytest.raises(ValueError):
        run("robust", label_smoothing=0.5)


def test_bco_pair():
    """δ = 0.02: -logσ(βc - δ) - logσ(-(βr - δ)).
    pair 1: -logσ(0.08) - logσ(0.07) = 0.653947 + 0.658760 = 1.312707;
    pair 2: -logσ(0.03) - logσ(0.07) = 0.678260 + 0.658760 = 1.337019; mean = 1.324863."""
    expected = mean(
        nls(BETA * c - 0.02) + nls(-(BETA * r - 0.02)) for c, r in zip(C, R, strict=True)
    )
    assert expected == pytest.approx(1.324863, rel=1e-5)
    loss, metrics = run("bco_pair", bco_delta=0.02)
    assert loss == pytest.approx(expected, rel=1e-5)
    # batch reward mean for the running δ: mean(0.1, 0.05, -0.05, -0.05) = 0.0125
    assert metrics["bco/reward_mean"].item() == pytest.approx(0.0125, rel=1e-5)
    assert run("bco_pair", bco_delta=torch.tensor(0.02))[0] == pytest.approx(expected, rel=1e-5)


def test_sppo_hard():
    """1/(2β) = 5: (c - 5)^2 + (r + 5)^2.
    pair 1: 16 + 20.25 = 36.25; pair 2: 20.25 + 20.25 = 40.5; mean = 38.375."""
    assert run("sppo_hard")[0] == pytest.approx(38.375, rel=1e-5)


def test_nca_pair():
    """-logσ(βc) - ½logσ(-βc) - ½logσ(-βr).
    pair 1: 0.644397 + ½·0.744397 + ½·0.668460 = 1.350825;
    pair 2: 0.668460 + ½·0.718460 + ½·0.668460 = 1.361919; mean = 1.356372."""
    expected = mean(
        nls(BETA * c) + 0.5 * nls(-BETA * c) + 0.5 * nls(-BETA * r)
        for c, r in zip(C, R, strict=True)
    )
    assert expected == pytest.approx(1.356372, rel=1e-5)
    assert run("nca_pair")[0] == pytest.approx(expected, rel=1e-5)


def test_apo_zero():
    """(1 - σ(βc)) + σ(βr).
    pair 1: (1 - 0.524979) + 0.487503 = 0.962523; pair 2: (1 - 0.512497) + 0.487503 = 0.975005;
    mean = 0.968764."""
    expected = mean((1 - sig(BETA * c)) + sig(BETA * r) for c, r in zip(C, R, strict=True))
    assert expected == pytest.approx(0.968764, rel=1e-5)
    assert run("apo_zero")[0] == pytest.approx(expected, rel=1e-5)


def test_apo_down():
    """σ(βc) + (1 - σ(βh)).
    pair 1: 0.524979 + (1 - 0.537430) = 0.987549; pair 2: 0.512497 + (1 - 0.524979) = 0.987518;
    mean = 0.987534."""
    expected = mean(sig(BETA * c) + (1 - sig(BETA * h)) for c, h in zip(C, H, strict=True))
    assert expected == pytest.approx(0.987534, rel=1e-5)
    assert run("apo_down")[0] == pytest.approx(expected, rel=1e-5)


def test_exo_pair_default_and_explicit_epsilon():
    """ε = 1e-3 (the default when label_smoothing = 0):
    σ(βh)(logσ(βh) - log(1-ε)) + σ(-βh)(logσ(-βh) - log ε).
    pair 1: 0.537430·(-0.620957 + 0.001001) + 0.462570·(-0.770957 + 6.907755) = 2.505517;
    pair 2: 0.524979·(-0.644397 + 0.001001) + 0.475021·(-0.744397 + 6.907755) = 2.589954;
    mean = 2.547735."""
    eps = 1e-3
    expected = mean(
        sig(BETA * h) * (-nls(BETA * h) - math.log(1 - eps))
        + sig(-BETA * h) * (-nls(-BETA * h) - math.log(eps))
        for h in H
    )
    assert expected == pytest.approx(2.547735, rel=1e-5)
    assert run("exo_pair")[0] == pytest.approx(expected, rel=1e-5)
    assert run("exo_pair", label_smoothing=1e-3)[0] == pytest.approx(expected, rel=1e-5)


def test_metrics():
    """βc = [0.1, 0.05] -> mean 0.075; βr = [-0.05, -0.05] -> -0.05; margin 0.125; accuracy 1.
    logps: chosen mean(-1, -2) = -1.5, rejected mean(-3, -1.5) = -2.25."""
    pc = PC.clone().requires_grad_(True)
    _, m = dpo_loss(pc, PR, RC, RR, beta=BETA)
    expected = {
        "rewards/chosen": 0.075,
        "rewards/rejected": -0.05,
        "rewards/accuracy": 1.0,
        "rewards/margin": 0.125,
        "logps/chosen": -1.5,
        "logps/rejected": -2.25,
    }
    assert set(m) == set(expected)
    for k, v in expected.items():
        assert m[k].item() == pytest.approx(v, rel=1e-5), k
        assert not m[k].requires_grad


def test_reference_free():
    """c = policy logps [-1, -2], r = [-3, -1.5] -> h = [2, -0.5];
    loss = (-logσ(0.2) - logσ(-0.05)) / 2 = (0.598139 + 0.718460) / 2 = 0.658299."""
    loss, m = dpo_loss(PC, PR, None, None, beta=BETA, reference_free=True)
    expected = (nls(0.2) + nls(-0.05)) / 2
    assert expected == pytest.approx(0.658299, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert m["rewards/chosen"].item() == pytest.approx(-0.15, rel=1e-5)


def test_missing_reference_raises():
    with pytest.raises(ValueError, match="reference"):
        dpo_loss(PC, PR, None, None, beta=BETA)


def test_weighted_sum_of_types():
    """1.0 · sigmoid + 0.5 · hinge = 0.632677 + 0.5 · 0.875 = 1.070177; per-type metrics."""
    loss, m = run(["sigmoid", "hinge"], loss_weights=[1.0, 0.5])
    expected = mean(nls(BETA * h) for h in H) + 0.5 * 0.875
    assert expected == pytest.approx(1.070177, rel=1e-5)
    assert loss == pytest.approx(expected, rel=1e-5)
    assert m["loss/sigmoid"].item() == pytest.approx(expected - 0.4375, rel=1e-5)
    assert m["loss/hinge"].item() == pytest.approx(0.875, rel=1e-5)
    # default weights are 1 each
    assert run(["sigmoid", "hinge"])[0] == pytest.approx(expected + 0.4375, rel=1e-5)


def test_weight_count_mismatch_raises():
    with pytest.raises(ValueError):
        run(["sigmoid", "hinge"], loss_weights=[1.0])


@pytest.mark.parametrize("loss_type", ["bogus", ["sigmoid", "bogus"]])
def test_unknown_type_lists_valid_names(loss_type):
    with pytest.raises(ValueError, match="bogus") as err:
        run(loss_type)
    for name in DPO_LOSSES:
        assert name in str(err.value)


def test_table_contents():
    assert set(DPO_LOSSES) == {
        "sigmoid",
        "hinge",
        "ipo",
        "robust",
        "bco_pair",
        "sppo_hard",
        "nca_pair",
        "apo_zero",
        "apo_down",
        "exo_pair",
    }


@pytest.mark.parametrize("loss_type", sorted(DPO_LOSSES))
def test_gradient_signs(loss_type):
    """Near the reference (small log-ratios) a descent step lowers the rejected log-prob, and
    raises the chosen one for every type except apo_down, which lowers both by design."""
    pc = torch.tensor([-10.0, -12.0], requires_grad=True)
    pr = torch.tensor([-11.0, -12.5], requires_grad=True)
    rc = torch.tensor([-10.2, -11.9])
    rr = torch.tensor([-10.8, -12.6])
    loss, _ = dpo_loss(pc, pr, rc, rr, beta=BETA, loss_type=loss_type, label_smoothing=0.1)
    loss.backward()
    assert torch.all(pr.grad > 0), pr.grad
    if loss_type == "apo_down":
        assert torch.all(pc.grad > 0), pc.grad
    else:
        assert torch.all(pc.grad < 0), pc.grad
    assert torch.all(torch.isfinite(pc.grad))
