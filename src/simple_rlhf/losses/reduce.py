"""The one place where per-token quantities are reduced to scalars.

Every loss in the package reduces through :func:`aggregate` (or the masked helpers below), so the
choice of normaliser — the thing RLHF code most often gets subtly wrong — is made by name, once.

Shapes: ``values`` and ``mask`` are ``[B, T]``; ``mask`` is 1 on tokens that count and 0 on padding
(or prompt) tokens. Masked positions never influence a result, whatever value they hold.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is 1 (NaN/inf in masked positions are ignored)."""
    mask = mask.to(values.dtype)
    values = torch.where(mask.bool(), values, torch.zeros_like(values))
    return (values * mask).sum() if dim is None else (values * mask).sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1; 0 where nothing is unmasked."""
    total = masked_sum(values, mask, dim)
    count = mask.to(values.dtype).sum() if dim is None else mask.to(values.dtype).sum(dim=dim)
    return total / count.clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over all unmasked positions (Bessel-corrected when ``unbiased``)."""
    mean = masked_mean(values, mask)
    sq = masked_sum((values - mean) ** 2, mask)
    n = mask.to(values.dtype).sum()
    if unbiased:
        return sq / (n - 1).clamp(min=1.0)
    return sq / n.clamp(min=1.0)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over unmasked positions; masked positions come out as 0.

    With ``shift_mean=False`` the mean is added back (scale only), as used for reward whitening.
    """
    mean = masked_mean(values, mask)
    var = masked_var(values, mask)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, torch.zeros_like(out))


# --- loss aggregation -------------------------------------------------------------------------


def _token_mean(loss: torch.Tensor, mask: torch.Tensor, constant: float | None) -> torch.Tensor:
    """Mean over every unmasked token of the batch (DAPO; long answers weigh more)."""
    return masked_mean(loss, mask)


def _seq_mean_token_mean(
    loss: torch.Tensor, mask: torch.Tensor, constant: float | None
) -> torch.Tensor:
    """Mean over tokens within each sequence, then mean over sequences (GRPO paper)."""
    per_seq = masked_mean(loss, mask, dim=-1)  # [B]
    has_tokens = (mask.sum(dim=-1) > 0).to(loss.dtype)
    return (per_seq * has_tokens).sum() / has_tokens.sum().clamp(min=1.0)


def _seq_mean_token_sum(
    loss: torch.Tensor, mask: torch.Tensor, constant: float | None
) -> torch.Tensor:
    """Sum over tokens within each sequence, then mean over sequences."""
    return masked_sum(loss, mask, dim=-1).mean()


def _seq_mean_token_sum_norm(
    loss: torch.Tensor, mask: torch.Tensor, constant: float | None
) -> torch.Tensor:
    """Sum over all tokens divided by ``B * constant`` (Dr. GRPO; constant defaults to T)."""
    norm = float(constant) if constant is not None else float(loss.shape[-1])
    return masked_sum(loss, mask) / (loss.shape[0] * norm)


AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, float | None], torch.Tensor]] = {
    "token_mean": _token_mean,
    "seq_mean_token_mean": _seq_mean_token_mean,
    "seq_mean_token_sum": _seq_mean_token_sum,
    "seq_mean_token_sum_norm": _seq_mean_token_sum_norm,
}


def aggregate(
    loss: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean", constant: float | None = None
) -> torch.Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar with the named normaliser.

    Modes: ``token_mean`` (sum / #tokens), ``seq_mean_token_mean`` (mean of per-sequence means),
    ``seq_mean_token_sum`` (mean of per-sequence sums), ``seq_mean_token_sum_norm`` (sum / (B * C),
    C = ``constant`` or T). Unknown names raise ``ValueError`` listing the valid ones.
    """
    try:
        fn = AGGREGATIONS[mode]
    except KeyError:
        raise ValueError(
            f"unknown loss aggregation {mode!r}; valid names: {', '.join(sorted(AGGREGATIONS))}"
        ) from None
    return fn(loss, mask, constant)
