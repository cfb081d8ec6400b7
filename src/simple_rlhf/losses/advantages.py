"""Token rewards, GAE and the critic-free (group) advantage estimators.

Shapes: ``scores`` ``[B]`` (one number per response), ``mask`` ``[B, T]`` (``response_mask``: 1 on
real response tokens including EOS, 0 on padding), every per-token tensor ``[B, T]``.

Masks may have any layout (right/left padding, holes). A masked step is treated as *not existing*:
it receives 0, it is skipped by every recursion (the next real step is bootstrapped directly, with a
single discount factor) and it never enters a statistic, whatever value it holds (NaN included).

Group estimators assume the ``group_size`` samples of a prompt are contiguous:
``B = n_prompts * group_size`` and row ``i`` belongs to group ``i // group_size``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from simple_rlhf.losses.reduce import masked_whiten


def _float(scores: torch.Tensor) -> torch.Tensor:
    """Integer scores (e.g. 0/1 correctness) become float32; float dtypes are kept."""
    return scores if scores.is_floating_point() else scores.float()


def _check_groups(scores: torch.Tensor, group_size: int, min_size: int = 1) -> int:
    """Validate ``B = n_groups * group_size`` and return ``n_groups``."""
    if group_size < min_size:
        raise ValueError(f"group_size must be >= {min_size} for this estimator, got {group_size}")
    if scores.dim() != 1 or scores.shape[0] % group_size != 0:
        raise ValueError(
            f"scores must be [B] with B divisible by group_size={group_size}, "
            f"got shape {tuple(scores.shape)}"
        )
    return scores.shape[0] // group_size


def last_token_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the last real token of each row and whether the row has any real token.

    Returns ``(index [B] long, has_tokens [B] bool)``; ``index`` is 0 for empty rows.
    """
    keep = mask.bool()
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(keep)
    index = torch.where(keep, positions, torch.full_like(positions, -1)).amax(dim=-1)
    has_tokens = index >= 0
    return index.clamp(min=0), has_tokens


def token_rewards_from_scores(
    scores: torch.Tensor,
    mask: torch.Tensor,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """Per-token rewards: KL penalty on every real token, the score on the last one.

    ``r_t = -kl_coef * kl_t + [t == last real token] * score``  (Ziegler et al. 2019; Ouyang et al.
    2022), 0 on masked positions. The last real token is found from ``mask`` (robust to right or
    left padding and holes); a row whose mask is all zero receives nothing.

    Args:
        scores: ``[B]`` sequence scores (RM output or reward function).
        mask: ``[B, T]`` response mask.
        kl: optional ``[B, T]`` per-token KL estimate (see ``losses.kl.kl_penalty``).
        kl_coef: KL coefficient ``beta``.

    Returns:
        ``[B, T]`` token rewards.
    """
    keep = mask.bool()
    dtype = scores.dtype if scores.is_floating_point() else torch.float32
    rewards = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    if kl is not None and kl_coef != 0.0:
        rewards = torch.where(keep, -kl_coef * kl.to(dtype), rewards)
    index, has_tokens = last_token_index(mask)
    positions = torch.arange(mask.shape[-1], device=mask.device)
    at_last = (positions[None, :] == index[:, None]) & has_tokens[:, None]
    return rewards + torch.where(at_last, scores.to(dtype)[:, None], torch.zeros_like(rewards))


def gae(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016), vectorised over the batch.

    Over the real steps ``t`` of a row (masked steps skipped), with ``t+1`` the next real step:
    ``delta_t = r_t + gamma * V_{t+1} - V_t``,  ``A_t = delta_t + gamma * lam * A_{t+1}``,
    where ``V`` and ``A`` after the last real step are 0 (the episode ends at EOS).
    ``returns = A + V`` (the critic's target).

    Args:
        token_rewards: ``[B, T]`` per-token rewards (see ``token_rewards_from_scores``).
        values: ``[B, T]`` critic values ``V(s_t)`` (old values, no gradient needed).
        mask: ``[B, T]`` response mask.
        gamma: discount; lam: GAE lambda.

    Returns:
        ``(advantages [B, T], returns [B, T])``, both 0 at masked positions.
    """
    keep = mask.bool()
    zeros = torch.zeros_like(token_rewards)
    rewards = torch.where(keep, token_rewards, zeros)
    values = torch.where(keep, values.to(rewards.dtype), zeros)
    next_value = zeros[:, 0]  # [B] value of the next real step
    next_adv = zeros[:, 0]  # [B] advantage of the next real step
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[-1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        real = keep[:, t]
        advantages[:, t] = torch.where(real, adv_t, zeros[:, t])
        next_value = torch.where(real, values[:, t], next_value)
        next_adv = torch.where(real, adv_t, next_adv)
    returns = torch.where(keep, advantages + values, zeros)
    return advantages, returns


def discounted_returns(
    token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Reward-to-go ``G_t = sum_{k>=t} gamma^(k-t) r_k`` over real steps; 0 at masked positions.

    This is GAE with ``V = 0`` and ``lam = 1``.
    """
    advantages, _ = gae(token_rewards, torch.zeros_like(token_rewards), mask, gamma, 1.0)
    return advantages


def _broadcast(seq_advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Copy a ``[B]`` sequence advantage onto every real token of its row (0 elsewhere)."""
    values = seq_advantages[:, None].expand(mask.shape)
    return torch.where(mask.bool(), values, torch.zeros_like(values))


def _kl_to_go(
    mask: torch.Tensor, kl: torch.Tensor | None, kl_coef: float, gamma: float, dtype: torch.dtype
) -> torch.Tensor:
    """Reward-to-go of the per-token KL penalty ``-kl_coef * kl`` (0 when there is no KL)."""
    if kl is None or kl_coef == 0.0:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    zeros = torch.zeros(mask.shape[0], dtype=dtype, device=mask.device)
    return discounted_returns(token_rewards_from_scores(zeros, mask, kl, kl_coef), mask, gamma)


# --- critic-free estimators (one table, one signature) ------------------------------------------
#
# fn(scores [B], mask [B, T], group_size, *, kl [B, T] | None, kl_coef, gamma, eps) -> [B, T]
#
# The KL penalty, when given, is put in the reward ("KL in reward", as OpenRLHF does for every
# estimator): for the sequence-level estimators the advantage of token t becomes
# shaped_score + sum_{k>=t} gamma^(k-t) * (-kl_coef * kl_k). With no KL (kl=None or kl_coef=0, the
# GRPO habit of putting KL in the loss instead) the shaped score is broadcast to every real token.


def grpo_advantages(
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath eq. 3 outcome supervision).

    ``A_i = (r_i - mean_g(r)) / (std_g(r) + eps)`` with the *unbiased* (Bessel, ``/(G-1)``) group
    std, as torch.std and the TRL/OpenRLHF/verl implementations use. Needs ``group_size >= 2``.
    """
    scores = _float(scores)
    n_groups = _check_groups(scores, group_size, min_size=2)
    grouped = scores.reshape(n_groups, group_size)
    mean = grouped.mean(dim=-1, keepdim=True)
    std = grouped.std(dim=-1, keepdim=True, unbiased=True)
    shaped = ((grouped - mean) / (std + eps)).reshape(-1)
    return _broadcast(shaped, mask) + _kl_to_go(mask, kl, kl_coef, gamma, shaped.dtype)


def dr_grpo_advantages(
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): ``A_i = r_i - mean_g(r)``.

    No division by the group std (which up-weights too-easy/too-hard prompts). ``eps`` is unused.
    Pair with the ``seq_mean_token_sum_norm`` aggregation to also drop the length bias.
    """
    scores = _float(scores)
    n_groups = _check_groups(scores, group_size)
    grouped = scores.reshape(n_groups, group_size)
    shaped = (grouped - grouped.mean(dim=-1, keepdim=True)).reshape(-1)
    return _broadcast(shaped, mask) + _kl_to_go(mask, kl, kl_coef, gamma, shaped.dtype)


def rloo_advantages(
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024; Kool et al. 2019): baseline = mean of the *other* K-1 samples.

    ``A_i = r_i - (sum_j r_j - r_i) / (K - 1) = K/(K-1) * (r_i - mean_g(r))``. Needs ``K >= 2``.
    ``eps`` is unused.
    """
    scores = _float(scores)
    n_groups = _check_groups(scores, group_size, min_size=2)
    grouped = scores.reshape(n_groups, group_size)
    baseline = (grouped.sum(dim=-1, keepdim=True) - grouped) / (group_size - 1)
    shaped = (grouped - baseline).reshape(-1)
    return _broadcast(shaped, mask) + _kl_to_go(mask, kl, kl_coef, gamma, shaped.dtype)


def reinforce_pp_advantages(
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """REINFORCE++ (Hu et al. 2025, arXiv:2501.03262): global advantage normalisation.

    1. token rewards ``r_t = -kl_coef * kl_t`` plus the score at the last real token;
    2. ``G_t = sum_{k>=t} gamma^(k-t) r_k`` (reward-to-go over real tokens);
    3. ``A = (G - mean(G)) / sqrt(var(G) + eps)`` over every real token of the whole batch
       (``reduce.masked_whiten``, unbiased variance; ``eps`` is added to the variance).
    ``group_size`` only needs to divide B (any value, 1 included).
    """
    scores = _float(scores)
    _check_groups(scores, group_size)
    returns = discounted_returns(token_rewards_from_scores(scores, mask, kl, kl_coef), mask, gamma)
    return masked_whiten(returns, mask, shift_mean=True, eps=eps)


def reinforce_pp_baseline_advantages(
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """REINFORCE++ with baseline (Hu et al. 2025) for ``K`` samples per prompt.

    Order (as in OpenRLHF's ``reinforce_baseline``, the authors' implementation):
    1. ``s'_i = s_i - mean_g(s)`` (group-mean baseline on the *scores*, no group std);
    2. token rewards from ``s'`` and the per-token KL penalty, ``r_t = -kl_coef * kl_t`` (+ ``s'`` at
       the last real token), then reward-to-go ``G_t`` with ``gamma``;
    3. normalise over the whole batch's real tokens: ``(G - mean(G)) / sqrt(var(G) + eps)``.
    Step 3 also subtracts the batch token mean, as OpenRLHF does; some write-ups divide by the
    batch std only. The two differ only through the KL term and unequal lengths (the shaped scores
    have zero mean per group).
    """
    scores = _float(scores)
    n_groups = _check_groups(scores, group_size)
    grouped = scores.reshape(n_groups, group_size)
    shaped = (grouped - grouped.mean(dim=-1, keepdim=True)).reshape(-1)
    returns = discounted_returns(token_rewards_from_scores(shaped, mask, kl, kl_coef), mask, gamma)
    return masked_whiten(returns, mask, shift_mean=True, eps=eps)


AdvantageEstimator = Callable[..., torch.Tensor]

ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
    "reinforce_pp_baseline": reinforce_pp_baseline_advantages,
}


def compute_advantages(
    name: str,
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    eps: float | None = None,
) -> torch.Tensor:
    """Dispatch to ``ADVANTAGE_ESTIMATORS[name]``; ``eps=None`` keeps the estimator's default.

    Returns ``[B, T]`` advantages, 0 at masked positions. Unknown names raise ``ValueError``.
    """
    try:
        fn = ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown advantage estimator {name!r}; valid names: "
            f"{', '.join(sorted(ADVANTAGE_ESTIMATORS))}"
        ) from None
    extra = {} if eps is None else {"eps": eps}
    return fn(scores, mask, group_size, kl=kl, kl_coef=kl_coef, gamma=gamma, **extra)


def group_all_equal(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[n_groups]`` bool: True where every sample of the group has the same score.

    Such groups carry no group-relative signal (DAPO's dynamic sampling filters them out).
    """
    scores = _float(scores)
    n_groups = _check_groups(scores, group_size)
    grouped = scores.reshape(n_groups, group_size)
    return grouped.amax(dim=-1) == grouped.amin(dim=-1)
