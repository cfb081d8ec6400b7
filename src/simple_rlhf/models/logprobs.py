"""Per-token log-probabilities and entropies from language-model logits.

Shapes: ``logits`` ``[B, T, V]``, ``labels`` / ``input_ids`` ``[B, T]``, ``mask`` ``[B, T]``.
Everything is computed in float32 one sequence at a time, so the only full-vocabulary float32
temporaries are ``[T, V]`` (a bf16 ``[B, T, V]`` tensor is never up-cast as a whole).

``token_logprobs`` does no shifting: ``logits[:, t]`` scores ``labels[:, t]``. For a causal LM
whose ``logits[:, t]`` predict ``input_ids[:, t + 1]`` use :func:`causal_lm_logprobs`.

Sampling temperature: if responses were sampled at temperature ``τ``, the probabilities that
generated them are ``softmax(logits / τ)``; pass the same ``temperature`` when recomputing them.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """``log softmax(logits / τ)[label]`` per position, ``[B, T, V] x [B, T] -> [B, T]`` float32.

    Computed as ``z[label] - logsumexp(z)`` with ``z = float32(logits) / τ``, row by row, which
    avoids materialising a full ``[B, T, V]`` log-softmax. Positions whose label equals
    ``ignore_index`` (-100) return 0.
    """
    _check_temperature(temperature)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    valid = labels != ignore_index  # [B, T]
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    rows = []
    for b in range(logits.shape[0]):
        z = logits[b].float()  # [T, V]
        if temperature != 1.0:
            z = z / temperature
        picked = z.gather(-1, safe_labels[b].unsqueeze(-1)).squeeze(-1)  # [T]
        rows.append(picked - torch.logsumexp(z, dim=-1))
    out = torch.stack(rows) if rows else logits.new_zeros(labels.shape, dtype=torch.float32)
    return torch.where(valid, out, torch.zeros_like(out))


def causal_lm_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Log-prob of each next token: ``logits[:, :-1]`` scores ``input_ids[:, 1:]``.

    ``[B, T, V] x [B, T] -> [B, T - 1]``; entry ``t`` is ``log p(input_ids[:, t + 1] | <= t)``.
    Slice a ``[B, T]`` mask the same way (``mask[:, 1:]``) to select response tokens.
    """
    return token_logprobs(logits[:, :-1], input_ids[:, 1:], temperature=temperature)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of ``softmax(logits / τ)`` at each position, ``[B, T, V] -> [B, T]`` float32.

    ``H = logsumexp(z) - sum_v softmax(z)_v z_v`` (the identity ``-sum p log p`` rewritten so no
    ``log 0`` appears), computed row by row in float32.
    """
    _check_temperature(temperature)
    rows = []
    for b in range(logits.shape[0]):
        z = logits[b].float()  # [T, V]
        if temperature != 1.0:
            z = z / temperature
        p = torch.softmax(z, dim=-1)
        rows.append(torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1))
    if not rows:
        return logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
    return torch.stack(rows)


def sequence_logprobs(
    logprobs: torch.Tensor, mask: torch.Tensor, average: bool = False
) -> torch.Tensor:
    """Per-sequence log-prob ``[B, T] -> [B]``: sum over masked tokens, or their mean if ``average``.

    ``sum_t m_t lp_t`` (log p(y|x)), or ``sum_t m_t lp_t / max(1, sum_t m_t)`` (length-averaged,
    used by IPO / SimPO / ORPO). Masked positions never contribute, whatever they hold (even NaN).
    """
    valid = mask.bool()
    lp = torch.where(valid, logprobs, torch.zeros_like(logprobs))
    m = valid.to(lp.dtype)
    total = (lp * m).sum(dim=-1)
    if average:
        return total / m.sum(dim=-1).clamp(min=1.0)
    return total
