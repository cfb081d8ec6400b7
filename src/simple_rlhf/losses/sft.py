"""Supervised fine-tuning loss: negative log-likelihood of the target tokens.

Shapes: ``logprobs`` ``[B, T]`` (log p of each target token, e.g. from
``models.logprobs.causal_lm_logprobs``), ``mask`` ``[B, T]`` (1 on tokens that are trained on,
normally the response tokens only; 0 on prompt and padding).
"""

from __future__ import annotations

import torch

from simple_rlhf.losses.reduce import aggregate, masked_mean


def sft_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    aggregation: str = "token_mean",
    constant: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = aggregate(-logprobs, mask, aggregation)`` — maximum-likelihood training.

    With the default ``token_mean`` this is ``sum_{b,t} m_bt (-lp_bt) / sum_{b,t} m_bt``, the usual
    cross-entropy over every trained token of the batch; see ``losses.reduce.aggregate`` for the
    other normalisers (``constant`` is used by ``seq_mean_token_sum_norm``).

    Metrics (detached): ``nll`` — the token-mean NLL whatever ``aggregation`` is (so runs with
    different normalisers stay comparable; ``exp(nll)`` is the perplexity), ``num_tokens``.
    """
    loss = aggregate(-logprobs, mask, aggregation, constant)
    with torch.no_grad():
        metrics = {
            "nll": masked_mean(-logprobs.detach(), mask),
            "num_tokens": mask.detach().to(torch.float32).sum(),
        }
    return loss, metrics
