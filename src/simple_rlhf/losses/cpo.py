"""CPO: contrastive preference optimisation — a reference-free preference term plus chosen NLL.

Xu et al. 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance
in Machine Translation", arXiv 2401.08417. CPO drops DPO's reference model (the log-
ratios become plain policy log-probs) and adds a behaviour-cloning NLL on the chosen answers.
"""

from __future__ import annotations

import torch

from simple_rlhf.losses.dpo import get_pair_loss
from simple_rlhf.losses.simpo import simpo_pair_losses

CPO_LOSS_TYPES: tuple[str, ...] = ("sigmoid", "hinge", "ipo", "simpo")


def cpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_nll: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    alpha: float = 1.0,
    simpo_gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = mean_b l_pref(c_b, r_b) + α · mean(chosen_nll)`` with reference-free log-probs.

    Preference term by ``loss_type`` (``h = c - r``, ``c``/``r`` policy log-probs):

    - ``"sigmoid"``: ``-(1-ε) log σ(βh) - ε log σ(-βh)`` (CPO) — DPO's sigmoid loss with a
      zero reference;
    - ``"hinge"``: ``max(0, 1 - βh)``; ``"ipo"``: ``(h - 1/(2β))^2`` — likewise from ``dpo.py``;
    - ``"simpo"``: ``-log σ(βh - γ)`` with ``γ = simpo_gamma``; the caller passes length-averaged
      log-probs. With ``alpha > 0`` this is CPO-SimPO (Meng et al. 2024, arXiv 2405.14734).

    ``chosen_nll`` is the negative log-likelihood of the chosen responses, ``[B]`` or a scalar
    (e.g. ``sft_loss`` over the chosen tokens); its mean is used. ``alpha = 0`` drops it.

    Shapes: ``chosen_logps``, ``rejected_logps`` ``[B]``. Metrics (detached scalars):
    ``rewards/chosen`` = mean βc, ``rewards/rejected`` = mean βr, ``rewards/accuracy``,
    ``rewards/margin``, ``logps/chosen``, ``logps/rejected``, ``nll``, ``loss/preference``.
    """
    if loss_type == "simpo":
        pref = simpo_pair_losses(
            chosen_logps,
            rejected_logps,
            beta=beta,
            gamma=simpo_gamma,
            label_smoothing=label_smoothing,
        )
    elif loss_type in CPO_LOSS_TYPES:
        pref = get_pair_loss(loss_type)(
            chosen_logps, rejected_logps, beta=beta, label_smoothing=label_smoothing
        )
    else:
        raise ValueError(
            f"unknown CPO loss type {loss_type!r}; valid names: {', '.join(sorted(CPO_LOSS_TYPES))}"
        )
    pref_loss = pref.mean()
    nll = chosen_nll.mean()
    loss = pref_loss + alpha * nll if alpha else pref_loss

    with torch.no_grad():
        chosen_rewards = beta * chosen_logps.detach()
        rejected_rewards = beta * rejected_logps.detach()
        metrics = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "rewards/margin": (chosen_rewards - rejected_rewards).mean(),
            "logps/chosen": chosen_logps.detach().mean(),
            "logps/rejected": rejected_logps.detach().mean(),
            "nll": nll.detach(),
            "loss/preference": pref_loss.detach(),
        }
    return loss, metrics
