"""ORPO: odds-ratio preference optimisation — SFT NLL plus a log-odds-ratio penalty.

Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model",
arXiv 2403.07691. No reference model and no separate SFT stage.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Length-averaged log-probs are clamped to at most this before log(1 - p): at exactly 0 the odds
# are infinite (and the gradient NaN), which a tiny over-fitted model can reach in float32.
MAX_AVG_LOGP = -1e-6


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurately on both sides of ``-log 2`` (Mächler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_odds(avg_logps: torch.Tensor) -> torch.Tensor:
    """``log(p / (1 - p))`` from ``log p``: ``a - log(1 - exp(a))`` (a clamped to ``<= -1e-6``)."""
    a = avg_logps.clamp(max=MAX_AVG_LOGP)
    return a - log1mexp(a)


def orpo_loss(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    chosen_nll: torch.Tensor,
    *,
    lam: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = mean(chosen_nll) + λ · mean_b -log σ(log odds(y_c|x) - log odds(y_r|x))``.

    ``odds(y|x) = P(y|x) / (1 - P(y|x))`` with ``P(y|x) = exp(a)`` and ``a`` the length-averaged
    log-prob (``sequence_logprobs(..., average=True)``), so ``log odds = a - log(1 - exp(a))``,
    computed with ``log1mexp``. ``chosen_nll`` (``[B]`` or scalar) is the SFT loss on the
    chosen responses; the paper's λ (``lam``) is about 0.1.

    Shapes: ``chosen_avg_logps``, ``rejected_avg_logps`` ``[B]``. Metrics (detached scalars):
    ``log_odds_ratio`` (mean of log odds_c - log odds_r), ``log_odds_chosen`` (mean),
    ``nll``, ``or_loss`` (mean -log σ(log odds ratio)), ``rewards/accuracy`` (fraction with a
    positive log odds ratio).
    """
    lo_chosen = log_odds(chosen_avg_logps)
    lo_rejected = log_odds(rejected_avg_logps)
    ratio = lo_chosen - lo_rejected  # [B]
    or_loss = -F.logsigmoid(ratio).mean()
    nll = chosen_nll.mean()
    loss = nll + lam * or_loss
    with torch.no_grad():
        metrics = {
            "log_odds_ratio": ratio.detach().mean(),
            "log_odds_chosen": lo_chosen.detach().mean(),
            "nll": nll.detach(),
            "or_loss": or_loss.detach(),
            "rewards/accuracy": (ratio.detach() > 0).float().mean(),
        }
    return loss, metrics
