"""KTO: Kahneman–Tversky optimisation on unpaired desirable / undesirable examples.

Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
arXiv 2402.01306. Each example is a single (prompt, completion) with a binary label.

Notation (``[B]``): ``ρ = log π(y|x) - log π_ref(y|x)`` (the implied reward is ``βρ``),
``z0`` = the reference point, an estimate of ``KL(π || π_ref)`` that is a constant for the loss.
"""

from __future__ import annotations

import torch

from simple_rlhf.losses.reduce import masked_mean


def kto_reference_point(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """``z0 = max(0, mean_b(log π(y'_b|x_b) - log π_ref(y'_b|x_b)))``, detached scalar.

    The trainer computes the log-probs on *mismatched* pairs (each prompt with another example's
    completion, the paper's biased KL estimate); under data parallelism average the per-rank
    means before calling :func:`kto_loss`. Shapes: both inputs ``[B]``.
    """
    return (policy_kl_logps.detach() - ref_kl_logps.detach()).mean().clamp(min=0.0)


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    kl_ref_point: torch.Tensor | float,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = mean_b l_b`` with

    - desirable (``labels_b`` True):    ``l_b = λ_D (1 - σ(β(ρ_b - z0)))``
    - undesirable (``labels_b`` False): ``l_b = λ_U (1 - σ(β(z0 - ρ_b)))``

    where ``z0 = max(0, kl_ref_point)`` is detached (no gradient flows through the reference
    point). The paper's value term ``λ_y - v(x, y)`` is this up to the constant ``λ_y``.
    ``λ_D`` / ``λ_U`` (``desirable_weight`` / ``undesirable_weight``) rebalance unequal class
    counts; the paper recommends ``λ_D n_D / (λ_U n_U)`` in ``[1, 4/3]``.

    Shapes: ``policy_logps``, ``ref_logps``, ``labels`` (bool) ``[B]``; ``kl_ref_point`` scalar.
    Metrics (detached scalars): ``rewards/chosen`` / ``rewards/rejected`` = mean βρ over the
    desirable / undesirable examples (0 if there are none), ``kl`` = z0.
    """
    labels = labels.bool()
    z0 = torch.as_tensor(kl_ref_point, dtype=policy_logps.dtype, device=policy_logps.device)
    z0 = z0.detach().clamp(min=0.0)
    logratios = policy_logps - ref_logps  # [B]
    desirable = desirable_weight * (1.0 - torch.sigmoid(beta * (logratios - z0)))
    undesirable = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - logratios)))
    loss = torch.where(labels, desirable, undesirable).mean()

    with torch.no_grad():
        rewards = beta * logratios.detach()
        metrics = {
            "rewards/chosen": masked_mean(rewards, labels),
            "rewards/rejected": masked_mean(rewards, ~labels),
            "kl": z0,
        }
    return loss, metrics
