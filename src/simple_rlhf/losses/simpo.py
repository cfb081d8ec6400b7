"""SimPO: reference-free preference optimisation on length-averaged log-probs.

Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
arXiv 2405.14734.
"""

from __future__ import annotations

import torch

from simple_rlhf.losses.dpo import logistic_losses


def simpo_pair_losses(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    *,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair SimPO loss ``[B]``: ``-(1-ε) log σ(z) - ε log σ(-z)``, ``z = β(a_c - a_r) - γ``."""
    return logistic_losses(beta * (chosen_avg_logps - rejected_avg_logps) - gamma, label_smoothing)


def simpo_loss(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = mean_b -log σ(β a_c - β a_r - γ)`` (with optional label smoothing ``ε``).

    ``a = (1/|y|) log π(y|x)`` is the length-averaged policy log-prob
    (``sequence_logprobs(..., average=True)``); there is no reference model.

    ``gamma`` is the paper's *absolute* target reward margin ``γ``. TRL instead exposes
    ``gamma_beta_ratio = γ / β``; to reproduce a TRL setting pass ``gamma = beta *
    gamma_beta_ratio``.

    Shapes: inputs ``[B]``. Metrics (detached scalars): ``rewards/chosen`` = mean β a_c,
    ``rewards/rejected`` = mean β a_r, ``rewards/accuracy``, ``rewards/margin``,
    ``logps/chosen``, ``logps/rejected`` (mean average log-probs).
    """
    losses = simpo_pair_losses(
        chosen_avg_logps,
        rejected_avg_logps,
        beta=beta,
        gamma=gamma,
        label_smoothing=label_smoothing,
    )
    with torch.no_grad():
        chosen_rewards = beta * chosen_avg_logps.detach()
        rejected_rewards = beta * rejected_avg_logps.detach()
        metrics = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "rewards/margin": (chosen_rewards - rejected_rewards).mean(),
            "logps/chosen": chosen_avg_logps.detach().mean(),
            "logps/rejected": rejected_avg_logps.detach().mean(),
        }
    return losses.mean(), metrics
