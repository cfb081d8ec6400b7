"""Tests for losses/advantages.py: token rewards, GAE and the critic-free estimators.

Slow references are explicit per-row Python loops over the *real* positions of each row, so a mask
with holes is handled by construction there (a masked step does not exist).
"""

from __future__ import annotations

import math

import pytest
import torch

from simple_rlhf.losses.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    discounted_returns,
    gae,
    group_all_equal,
    token_rewards_from_scores,
)

NAN = float("nan")


# --- plain-python references ----------------------------------------------------------------------


def _real(mask_row: list[float]) -> list[int]:
    return [t for t, m in enumerate(mask_row) if m]


def ref_gae(rewards, values, mask, gamma, lam):
    """Per-row backwards loop over the real positions only."""
    adv = [[0.0] * len(r) for r in rewards]
    ret = [[0.0] * len(r) for r in rewards]
    for b in range(len(rewards)):
        idx = _real(mask[b])
        last, next_v = 0.0, 0.0
        for t in reversed(idx):
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            last = delta + gamma * lam * last
            adv[b][t] = last
            ret[b][t] = last + values[b][t]
            next_v = values[b][t]
    return adv, ret


def ref_token_rewards(scores, mask, kl, kl_coef):
    out = [[0.0] * len(m) for m in mask]
    for b in range(len(mask)):
        idx = _real(mask[b])
        for t in idx:
            out[b][t] = -kl_coef * (kl[b][t] if kl is not None else 0.0)
        if idx:
            out[b][idx[-1]] += scores[b]
    return out


def ref_returns(rewards, mask, gamma):
    out = [[0.0] * len(m) for m in mask]
    for b in range(len(mask)):
        g = 0.0
        for t in reversed(_real(mask[b])):
            g = rewards[b][t] + gamma * g
            out[b][t] = g
    return out


def ref_shaped(name, scores, k, eps):
    shaped = []
    for start in range(0, len(scores), k):
        grp = scores[start : start + k]
        mean = sum(grp) / k
        for r in grp:
            if name == "grpo":
                std = math.sqrt(sum((x - mean) ** 2 for x in grp) / (k - 1))
                shaped.append((r - mean) / (std + eps))
            elif name == "rloo":
                shaped.append(r - (sum(grp) - r) / (k - 1))
            elif name == "reinforce_pp":
                shaped.append(r)
            else:  # dr_grpo, reinforce_pp_baseline
                shaped.append(r - mean)
    return shaped


def ref_whiten(x, mask, eps):
    vals = [x[b][t] for b in range(len(x)) for t in _real(mask[b])]
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return [
        [(x[b][t] - mean) / math.sqrt(var + eps) if mask[b][t] else 0.0 for t in range(len(x[b]))]
        for b in range(len(x))
    ]


def ref_advantages(name, scores, mask, k, kl, kl_coef, gamma, eps):
    shaped = ref_shaped(name, scores, k, eps)
    if name.startswith("reinforce_pp"):
        rets = ref_returns(ref_token_rewards(shaped, mask, kl, kl_coef), mask, gamma)
        return ref_whiten(rets, mask, eps)
    kl_to_go = ref_returns(ref_token_rewards([0.0] * len(scores), mask, kl, kl_coef), mask, gamma)
    return [
        [(shaped[b] + kl_to_go[b][t]) if mask[b][t] else 0.0 for t in range(len(mask[b]))]
        for b in range(len(mask))
    ]


def _random_mask(gen: torch.Generator, b: int, t: int, layout: str) -> torch.Tensor:
    lengths = torch.randint(0, t + 1, (b,), generator=gen)
    pos = torch.arange(t)[None, :]
    if layout == "right":
        return (pos < lengths[:, None]).float()
    if layout == "left":
        return (pos >= (t - lengths)[:, None]).float()
    mask = (torch.rand(b, t, generator=gen) > 0.3).float()  # holes anywhere
    mask[0] = 1.0  # at least one full row so whitening has tokens
    return mask


def _with_garbage(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.bool(), x, torch.full_like(x, NAN))


# --- token rewards --------------------------------------------------------------------------------


def test_token_rewards_right_left_hole_empty() -> None:
    """kl_coef = 0.5, scores [1, 2, 3, 4].
    row0 right pad  mask [1,1,0,0] kl [0.1,0.2,nan,nan]: [-0.05, -0.1+1 = 0.9, 0, 0]
    row1 left pad   mask [0,1,1,1] kl [nan,0.2,0.4,-0.2]: [0, -0.1, -0.2, 0.1+2 = 2.1]
    row2 hole       mask [1,0,1,0] kl [0.2,nan,0.6,nan]: [-0.1, 0, -0.3+3 = 2.7, 0]
    row3 empty      mask [0,0,0,0]: nothing (score 4 is dropped)."""
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]])
    kl = torch.tensor(
        [[0.1, 0.2, NAN, NAN], [NAN, 0.2, 0.4, -0.2], [0.2, NAN, 0.6, NAN], [NAN] * 4]
    )
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = token_rewards_from_scores(scores, mask, kl, kl_coef=0.5)
    expected = torch.tensor(
        [[-0.05, 0.9, 0, 0], [0, -0.1, -0.2, 2.1], [-0.1, 0, 2.7, 0], [0, 0, 0, 0]]
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-7)
    # without KL only the score lands, at the last real token
    no_kl = token_rewards_from_scores(scores, mask)
    expected = torch.tensor([[0, 1.0, 0, 0], [0, 0, 0, 2.0], [0, 0, 3.0, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(no_kl, expected)


# --- GAE ------------------------------------------------------------------------------------------


def test_gae_by_hand_and_with_a_hole() -> None:
    """gamma 0.9, lam 0.8, r = [0, 0, 1], V = [0.5, 0.6, 0.7]:
    d2 = 1 - 0.7 = 0.3;           A2 = 0.3
    d1 = 0.9*0.7 - 0.6 = 0.03;    A1 = 0.03 + 0.72*0.3 = 0.246
    d0 = 0.9*0.6 - 0.5 = 0.04;    A0 = 0.04 + 0.72*0.246 = 0.21712
    returns = A + V = [0.71712, 0.846, 1.0].
    The same row with a masked (NaN) step inserted after position 0 gives the same numbers there
    and 0 at the hole."""
    r = torch.tensor([[0.0, 0.0, 1.0], [0.0, NAN, 0.0]])
    v = torch.tensor([[0.5, 0.6, 0.7], [0.5, NAN, 0.6]])
    r = torch.cat([r, torch.tensor([[NAN], [1.0]])], dim=1)
    v = torch.cat([v, torch.tensor([[NAN], [0.7]])], dim=1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]])
    adv, ret = gae(r, v, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(
        adv,
        torch.tensor([[0.21712, 0.246, 0.3, 0], [0.21712, 0, 0.246, 0.3]]),
        rtol=1e-5,
        atol=1e-7,
    )
    torch.testing.assert_close(
        ret,
        torch.tensor([[0.71712, 0.846, 1.0, 0], [0.71712, 0, 0.846, 1.0]]),
        rtol=1e-5,
        atol=1e-7,
    )


@pytest.mark.parametrize("layout", ["right", "left", "holes"])
@pytest.mark.parametrize("seed,b,t", [(0, 1, 1), (1, 3, 5), (2, 4, 9), (3, 6, 7)])
@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0)])
def test_gae_matches_naive_loop(layout, seed, b, t, gamma, lam) -> None:
    gen = torch.Generator().manual_seed(seed)
    mask = _random_mask(gen, b, t, layout)
    rewards = torch.randn(b, t, generator=gen, dtype=torch.float64)
    values = torch.randn(b, t, generator=gen, dtype=torch.float64)
    adv, ret = gae(_with_garbage(rewards, mask), _with_garbage(values, mask), mask, gamma, lam)
    exp_adv, exp_ret = ref_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    torch.testing.assert_close(
        adv, torch.tensor(exp_adv, dtype=torch.float64), rtol=1e-5, atol=1e-9
    )
    torch.testing.assert_close(
        ret, torch.tensor(exp_ret, dtype=torch.float64), rtol=1e-5, atol=1e-9
    )


def test_gae_gamma1_lam1_returns_are_reward_to_go() -> None:
    """gamma = lam = 1: returns_t = sum_{k>=t} r_k (values cancel); r = [1, 2, 3] -> [6, 5, 3]."""
    r = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    v = torch.tensor([[0.3, -0.7, 2.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = gae(r, v, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, torch.tensor([[6.0, 5.0, 3.0, 0.0]]))
    torch.testing.assert_close(adv, torch.tensor([[5.7, 5.7, 1.0, 0.0]]))
    torch.testing.assert_close(discounted_returns(r, mask, 1.0), ret)


def test_discounted_returns_by_hand() -> None:
    """gamma 0.5, r = [1, hole, 2, 4]: G3 = 4, G2 = 2 + 0.5*4 = 4, G0 = 1 + 0.5*4 = 3."""
    r = torch.tensor([[1.0, NAN, 2.0, 4.0]])
    mask = torch.tensor([[1, 0, 1, 1]])
    torch.testing.assert_close(discounted_returns(r, mask, 0.5), torch.tensor([[3.0, 0, 4.0, 4.0]]))


# --- critic-free estimators -------------------------------------------------------------------


def test_grpo_dr_grpo_rloo_by_hand() -> None:
    """One group, scores [1, 2, 4]: mean 7/3; deviations [-4/3, -1/3, 5/3];
    unbiased var = (16/9 + 1/9 + 25/9) / 2 = 7/3, std = 1.5275252.
    grpo (eps 0) = [-0.8728716, -0.2182179, 1.0910895]
    dr_grpo      = [-1.3333333, -0.3333333, 1.6666667]
    rloo         = [1 - (2+4)/2, 2 - (1+4)/2, 4 - (1+2)/2] = [-2, -0.5, 2.5]
    Broadcast over real tokens; the masked token of row 1 stays 0."""
    scores = torch.tensor([1.0, 2.0, 4.0])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    cases = {
        "grpo": [-0.8728716, -0.2182179, 1.0910895],
        "dr_grpo": [-4 / 3, -1 / 3, 5 / 3],
        "rloo": [-2.0, -0.5, 2.5],
    }
    for name, seq in cases.items():
        out = compute_advantages(name, scores, mask, 3, eps=0.0)
        expected = torch.tensor(seq)[:, None] * mask
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-7)


def test_reinforce_pp_by_hand() -> None:
    """mask [[1,1],[1,0]], scores [1, 0], no KL, gamma 1: returns [[1,1],[0,-]].
    Real values {1, 1, 0}: mean 2/3, unbiased var = (1/9 + 1/9 + 4/9)/2 = 1/3, std 0.5773503
    -> [[0.5773503, 0.5773503], [-1.1547005, 0]].
    With baseline and K = 2 the scores become [0.5, -0.5]: returns {0.5, 0.5, -0.5}, mean 1/6,
    var = (1/9 + 1/9 + 4/9)/2 = 1/3 -> the same whitened numbers."""
    scores = torch.tensor([1.0, 0.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    expected = torch.tensor([[0.5773503, 0.5773503], [-1.1547005, 0.0]])
    torch.testing.assert_close(
        compute_advantages("reinforce_pp", scores, mask, 1), expected, rtol=1e-5, atol=1e-7
    )
    torch.testing.assert_close(
        compute_advantages("reinforce_pp_baseline", scores, mask, 2), expected, rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("name", sorted(ADVANTAGE_ESTIMATORS))
@pytest.mark.parametrize("layout", ["right", "left", "holes"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kl_coef,gamma", [(0.0, 1.0), (0.1, 1.0), (0.05, 0.9)])
def test_estimators_match_python_loop(name, layout, seed, kl_coef, gamma) -> None:
    gen = torch.Generator().manual_seed(seed)
    k, n_prompts, t = 3, 3, 6
    b = k * n_prompts
    mask = _random_mask(gen, b, t, layout)
    scores = torch.randint(0, 3, (b,), generator=gen).double()  # ties, like 0/1 rewards
    kl = torch.randn(b, t, generator=gen, dtype=torch.float64).abs()
    eps = 1e-6
    out = compute_advantages(
        name, scores, mask, k, kl=_with_garbage(kl, mask), kl_coef=kl_coef, gamma=gamma, eps=eps
    )
    expected = ref_advantages(
        name, scores.tolist(), mask.tolist(), k, kl.tolist(), kl_coef, gamma, eps
    )
    torch.testing.assert_close(
        out, torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-8
    )
    assert torch.all(out[mask == 0] == 0)


@pytest.mark.parametrize("name", ["reinforce_pp", "reinforce_pp_baseline", "grpo", "rloo"])
def test_extra_padding_columns_do_not_change_advantages(name) -> None:
    """Appending padded columns (mask 0, garbage KL) leaves the advantages of real tokens as they
    were, so batch whitening is invariant to how much padding a batch carries."""
    gen = torch.Generator().manual_seed(7)
    mask = _random_mask(gen, 6, 5, "right")
    scores = torch.randn(6, generator=gen)
    kl = torch.randn(6, 5, generator=gen)
    base = compute_advantages(name, scores, mask, 2, kl=kl, kl_coef=0.1)
    pad_mask = torch.cat([mask, torch.zeros(6, 4)], dim=1)
    pad_kl = torch.cat([kl, torch.full((6, 4), 1e6)], dim=1)
    padded = compute_advantages(name, scores, pad_mask, 2, kl=pad_kl, kl_coef=0.1)
    torch.testing.assert_close(padded[:, :5], base, rtol=1e-5, atol=1e-7)
    assert torch.all(padded[:, 5:] == 0)


def test_group_estimators_need_two_samples() -> None:
    scores, mask = torch.tensor([1.0, 2.0]), torch.ones(2, 3)
    with pytest.raises(ValueError, match="group_size"):
        compute_advantages("rloo", scores, mask, 1)
    with pytest.raises(ValueError, match="group_size"):
        compute_advantages("grpo", scores, mask, 1)
    with pytest.raises(ValueError, match="divisible"):
        compute_advantages("dr_grpo", torch.ones(3), torch.ones(3, 2), 2)


def test_unknown_estimator_lists_names() -> None:
    with pytest.raises(
        ValueError, match="dr_grpo, grpo, reinforce_pp, reinforce_pp_baseline, rloo"
    ):
        compute_advantages("ppo", torch.ones(2), torch.ones(2, 2), 2)


def test_group_all_equal() -> None:
    """groups of 2: [1,1] equal, [0,1] not, [2,2] equal."""
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0])
    torch.testing.assert_close(group_all_equal(scores, 2), torch.tensor([True, False, True]))
    # a group of identical scores gets zero GRPO advantage (no signal), not NaN
    out = compute_advantages("grpo", scores, torch.ones(6, 2), 2)
    assert torch.all(out[0:2] == 0) and torch.all(out[4:6] == 0)
