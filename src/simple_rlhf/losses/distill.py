"""Token-level distillation losses for GKD (Agarwal et al. 2024, "On-Policy Distillation of Language
Models: Learning from Self-Generated Mistakes").

Shapes: logits ``[B, T, V]`` over the positions that predict response tokens, ``mask`` ``[B, T]``.
``p_T`` is the teacher's next-token distribution, ``p_S`` the student's, both after dividing the
logits by ``temperature``.

Convention (the paper's ``D_JSD(beta)`` and TRL's ``generalized_jsd_loss``): with the mixture
``m = beta * p_T + (1 - beta) * p_S``

    JSD_beta = beta * KL(p_T || m) + (1 - beta) * KL(p_S || m)           for 0 < beta < 1
    beta = 0  ->  KL(p_T || p_S)   forward KL (mode covering; = supervised KD)
    beta = 1  ->  KL(p_S || p_T)   reverse KL (mode seeking)

The endpoints are computed directly: the mixture formula itself tends to 0 at both ends
(``JSD_beta ~ beta * KL(p_T||p_S)`` as beta -> 0 and ``~ (1-beta) * KL(p_S||p_T)`` as beta -> 1), so
beta = 0 and beta = 1 are the limits of ``JSD_beta / beta`` and ``JSD_beta / (1 - beta)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from simple_rlhf.losses.reduce import aggregate, masked_mean


def topk_logits(teacher_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's ``k`` largest logits per position: ``(values [..., k], indices [..., k])``.

    Store these instead of the full ``[B, T, V]`` teacher logits and pass them to
    ``generalized_jsd(..., teacher_indices=indices)``.
    """
    if k < 1 or k > teacher_logits.shape[-1]:
        raise ValueError(f"k must be in [1, {teacher_logits.shape[-1]}], got {k}")
    values, indices = torch.topk(teacher_logits, k, dim=-1)
    return values, indices


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``sum_v p_v (log p_v - log q_v)`` over the last dim, with ``0 * log 0 = 0``."""
    finite = torch.isfinite(log_p)
    safe_log_p = torch.where(finite, log_p, torch.zeros_like(log_p))
    terms = torch.exp(safe_log_p) * (safe_log_p - log_q)
    return torch.where(finite, terms, torch.zeros_like(terms)).sum(dim=-1)


def _per_token_jsd(log_s: torch.Tensor, log_t: torch.Tensor, beta: float) -> torch.Tensor:
    """``[B, T]`` divergence between student and teacher log-distributions ``[B, T, V]``."""
    if beta == 0.0:
        return _kl(log_t, log_s)
    if beta == 1.0:
        return _kl(log_s, log_t)
    log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log(1.0 - beta))
    return beta * _kl(log_t, log_m) + (1.0 - beta) * _kl(log_s, log_m)


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    aggregation: str = "token_mean",
    agg_constant: float | None = None,
    top_k: int | None = None,
    teacher_indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Generalised Jensen-Shannon divergence ``JSD_beta`` per token, summed over the vocabulary,
    then aggregated over real tokens (see the module docstring for the beta convention).

    Args:
        student_logits: ``[B, T, V]`` (with grad).
        teacher_logits: ``[B, T, V]``, or ``[B, T, k]`` top-k values when ``teacher_indices`` is set.
        mask: ``[B, T]`` response mask.
        beta: in ``[0, 1]``; 0 = forward KL(teacher || student), 1 = reverse KL(student || teacher).
        temperature: both logits are divided by it before the softmax.
        aggregation, agg_constant: passed to ``reduce.aggregate``.
        top_k: use only the teacher's ``top_k`` vocabulary entries per position (memory saver).
        teacher_indices: ``[B, T, k]`` vocabulary ids of precomputed teacher top-k logits.

    With ``top_k`` or ``teacher_indices`` both distributions are restricted to the teacher's top-k
    entries and renormalised over them (a log-softmax over the k gathered logits), so the loss is
    the divergence between the two conditional distributions on that support; mass outside it is
    ignored.

    Returns:
        ``(loss, metrics)`` with ``distill/loss`` and, when the full teacher logits are given with
        ``top_k``, ``distill/topk_mass`` (mean teacher probability covered by the top-k).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and teacher_indices is not None:
        raise ValueError("pass either top_k or teacher_indices, not both")
    keep = mask.bool()[..., None]
    # Neutralise masked positions so garbage there cannot reach the loss or the gradient.
    student = torch.where(keep, student_logits, torch.zeros_like(student_logits)) / temperature
    teacher = torch.where(keep, teacher_logits.detach(), torch.zeros_like(teacher_logits))
    teacher = teacher.to(student.dtype) / temperature
    metrics: dict[str, torch.Tensor] = {}
    if top_k is not None:
        full_log_t = torch.log_softmax(teacher, dim=-1)
        teacher, teacher_indices = topk_logits(teacher, top_k)
        mass = torch.gather(full_log_t, -1, teacher_indices).exp().sum(dim=-1)
        metrics["distill/topk_mass"] = masked_mean(mass.detach(), mask)
    if teacher_indices is not None:
        safe_indices = torch.where(keep, teacher_indices, torch.zeros_like(teacher_indices))
        student = torch.gather(student, -1, safe_indices)
    log_s = torch.log_softmax(student, dim=-1)
    log_t = torch.log_softmax(teacher, dim=-1)
    per_token = _per_token_jsd(log_s, log_t, beta)
    loss = aggregate(per_token, mask, aggregation, agg_constant)
    metrics["distill/loss"] = loss.detach()
    return loss, metrics


def forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, **kw: Any
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``KL(p_T || p_S)`` per token (supervised KD): ``generalized_jsd(..., beta=0, **kw)``."""
    return generalized_jsd(student_logits, teacher_logits, mask, beta=0.0, **kw)


def reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, **kw: Any
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``KL(p_S || p_T)`` per token (mode seeking): ``generalized_jsd(..., beta=1, **kw)``."""
    return generalized_jsd(student_logits, teacher_logits, mask, beta=1.0, **kw)
