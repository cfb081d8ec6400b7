"""PPO policy and value losses (Schulman et al. 2017, "Proximal Policy Optimization Algorithms").

Per-token tensors are ``[B, T]`` over response tokens; ``mask`` is the ``response_mask``. Masked
positions never change a loss, a metric or a gradient (their inputs are replaced by zeros first, so
even NaN there is harmless). Every loss is reduced with ``reduce.aggregate``.
"""

from __future__ import annotations

import torch

from simple_rlhf.losses.reduce import aggregate, masked_mean, masked_var


def _zero_masked(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return torch.where(keep, x, torch.zeros_like(x))


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    aggregation: str = "token_mean",
    agg_constant: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate policy loss, per token, then aggregated.

    ``rho_t = exp(logp_t - logp_old_t)``
    ``l_t = max(-A_t * rho_t, -A_t * clip(rho_t, 1 - clip_low, 1 + clip_high))``  (PPO; asymmetric
    clip range = DAPO "clip-higher", Yu et al. 2025)
    Dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games"), ``c = dual_clip > 1``:
    for ``A_t < 0``, ``l_t = min(l_t, -c * A_t)`` bounds the loss when ``rho_t`` is very large.

    Args:
        logprobs: ``[B, T]`` current-policy log-probs of the sampled tokens (with grad).
        old_logprobs: ``[B, T]`` log-probs at rollout time.
        advantages: ``[B, T]``.
        mask: ``[B, T]`` response mask.
        clip_low, clip_high: clip range ``[1 - clip_low, 1 + clip_high]``.
        dual_clip: ``c > 1`` or None (off).
        aggregation, agg_constant: passed to ``reduce.aggregate``.

    Returns:
        ``(loss, metrics)``; metrics (detached, over real tokens): ``policy/loss``,
        ``policy/clipfrac`` (fraction of tokens where the clipped branch is the active one, i.e.
        the gradient is cut), ``policy/dual_clipfrac`` (only with ``dual_clip``),
        ``policy/approx_kl`` (mean of ``1/2 (logp - logp_old)^2``, the k2 estimator of
        KL(old || new)), ``policy/ratio_mean``, ``policy/ratio_max``.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    keep = mask.bool()
    log_ratio = _zero_masked(logprobs - old_logprobs, keep)
    advantages = _zero_masked(advantages, keep).to(log_ratio.dtype)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    metrics: dict[str, torch.Tensor] = {}
    if dual_clip is not None:
        bound = -advantages * dual_clip
        dual_active = (advantages < 0) & (per_token > bound)
        per_token = torch.where(dual_active, bound, per_token)
        metrics["policy/dual_clipfrac"] = masked_mean(dual_active.to(ratio.dtype), mask).detach()
    loss = aggregate(per_token, mask, aggregation, agg_constant)

    with torch.no_grad():
        clip_active = (clipped > unclipped).to(ratio.dtype)
        real_ratio = torch.where(keep, ratio, torch.full_like(ratio, -torch.inf))
        ratio_max = real_ratio.max() if keep.any() else ratio.new_zeros(())
        metrics.update(
            {
                "policy/loss": loss.detach(),
                "policy/clipfrac": masked_mean(clip_active, mask),
                "policy/approx_kl": masked_mean(0.5 * log_ratio.detach() ** 2, mask),
                "policy/ratio_mean": masked_mean(ratio.detach(), mask),
                "policy/ratio_max": ratio_max.detach(),
            }
        )
    return loss, metrics


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float | None = 0.2,
    aggregation: str = "token_mean",
    agg_constant: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (PPO2 / OpenAI baselines; Ziegler et al. 2019).

    ``v_clip = v_old + clip(v - v_old, -eps, eps)``
    ``l_t = 1/2 * max((v - R)^2, (v_clip - R)^2)``; with ``clip_range=None``: ``1/2 (v - R)^2``.

    Args:
        values: ``[B, T]`` current critic values (with grad).
        old_values: ``[B, T]`` values at rollout time.
        returns: ``[B, T]`` targets (``gae`` returns).
        mask: ``[B, T]`` response mask.
        clip_range: ``eps`` or None (no clipping).
        aggregation, agg_constant: passed to ``reduce.aggregate``.

    Returns:
        ``(loss, metrics)`` with ``critic/value_loss``, ``critic/clipfrac`` (fraction of tokens
        where the clipped term is the larger one), ``critic/values_mean`` (detached).
    """
    keep = mask.bool()
    values_z = _zero_masked(values, keep)
    returns = _zero_masked(returns, keep).to(values_z.dtype)
    unclipped = (values_z - returns) ** 2
    if clip_range is None:
        per_token = 0.5 * unclipped
        clip_active = torch.zeros_like(unclipped)
    else:
        old_values = _zero_masked(old_values, keep).to(values_z.dtype)
        v_clip = old_values + (values_z - old_values).clamp(-clip_range, clip_range)
        clipped = (v_clip - returns) ** 2
        per_token = 0.5 * torch.maximum(unclipped, clipped)
        clip_active = (clipped > unclipped).to(values_z.dtype)
    loss = aggregate(per_token, mask, aggregation, agg_constant)
    metrics = {
        "critic/value_loss": loss.detach(),
        "critic/clipfrac": masked_mean(clip_active.detach(), mask),
        "critic/values_mean": masked_mean(values_z.detach(), mask),
    }
    return loss, metrics


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``1 - Var[R - V] / Var[R]`` over real tokens (detached scalar).

    1 is a perfect critic, 0 no better than a constant, < 0 worse. Returns 0 when ``Var[R] = 0``.
    """
    with torch.no_grad():
        keep = mask.bool()
        values = _zero_masked(values.detach(), keep)
        returns = _zero_masked(returns.detach(), keep).to(values.dtype)
        var_returns = masked_var(returns, mask)
        var_resid = masked_var(returns - values, mask)
        ev = 1.0 - var_resid / var_returns.clamp(min=torch.finfo(values.dtype).tiny)
        return torch.where(var_returns > 0, ev, torch.zeros_like(ev))
