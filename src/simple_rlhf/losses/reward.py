"""Reward-model (RLHF step 2) losses on scalar scores of chosen / rejected responses.

Two losses with different inputs, so they are not one table; the trainer picks one by name from
:data:`REWARD_LOSS_NAMES`:

- ``"pairwise"`` — :func:`pairwise_loss` on one score per sequence ``[B]`` (the value head read at
  the last real token; see :func:`last_token_values`).
- ``"dschat"`` — :func:`dschat_pairwise_loss` on per-token values ``[B, T]`` (DeepSpeed-Chat's
  variant that compares the two responses token by token after they diverge).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from simple_rlhf.losses.reduce import masked_mean

REWARD_LOSS_NAMES: tuple[str, ...] = ("pairwise", "dschat")


def last_token_values(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values[b, last t with mask[b, t] = 1]`` -> ``[B]``; works for left or right padding.

    Rows with no real token read position 0.
    """
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(dim=-1).values
    return values.gather(-1, last.unsqueeze(-1)).squeeze(-1)


def _pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    chosen, rejected = chosen.detach(), rejected.detach()
    return {
        "accuracy": (chosen > rejected).float().mean(),
        "chosen_mean": chosen.float().mean(),
        "rejected_mean": rejected.float().mean(),
        "margin_mean": (chosen - rejected).float().mean(),
    }


def pairwise_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley–Terry loss with optional margin and reward centering.

    ``L = mean_b[-log σ(r_c - r_r - m)] + c · mean_b[(r_c + r_r)^2]``

    - Bradley–Terry preference likelihood as used for RLHF reward models (Stiennon et al. 2020,
      Ouyang et al. 2022, arXiv 2203.02155, eq. 1).
    - ``margin`` ``m`` ``[B]`` (optional): a required score gap for pairs rated as clearly
      different (Llama 2, Touvron et al. 2023, arXiv 2307.09288, eq. 2).
    - ``center_coef`` ``c``: pulls the sum of the two scores towards 0 so rewards are centred
      (Eisenstein et al. 2023, "Helping or Herding?", arXiv 2312.09244).

    Shapes: ``chosen_scores``, ``rejected_scores``, ``margin`` ``[B]``.
    Metrics (detached scalars): ``accuracy`` (fraction with r_c > r_r, ties count 0),
    ``chosen_mean``, ``rejected_mean``, ``margin_mean`` (mean of r_c - r_r).
    """
    logits = chosen_scores - rejected_scores
    if margin is not None:
        logits = logits - margin
    loss = -F.logsigmoid(logits).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen_scores + rejected_scores) ** 2).mean()
    return loss, _pair_metrics(chosen_scores, rejected_scores)


def _compact_left(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Move each row's real tokens to the front in order, then repeat the last real one.

    ``[B, T] -> [B, T]``: out[b, t] = values[b, idx_b[min(t, L_b - 1)]] where idx_b lists the real
    positions of row b and ``L_b`` is their number. Padding side no longer matters afterwards.
    """
    T = mask.shape[-1]
    order = torch.argsort((~mask.bool()).to(torch.int8), dim=-1, stable=True)  # real first
    length = mask.bool().sum(dim=-1, keepdim=True).clamp(min=1)  # [B, 1]
    t = torch.arange(T, device=mask.device).unsqueeze(0)
    src = order.gather(-1, torch.minimum(t, length - 1).expand(mask.shape[0], T))
    return values.gather(-1, src)


def dschat_pairwise_loss(
    chosen_values: torch.Tensor,
    rejected_values: torch.Tensor,
    chosen_ids: torch.Tensor,
    rejected_ids: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DeepSpeed-Chat's token-wise pairwise loss (Yao et al. 2023, arXiv 2308.01320).

    Instead of comparing one score per response, the value head's output is compared at every
    position from the point where the two responses part ways up to the end of the longer one.
    For pair ``i``, with each sequence's real tokens taken in order (so the padding side does
    not matter) and lengths ``L_c``, ``L_r``:

    - ``d`` = first position where the chosen and rejected token ids differ (``min(L_c, L_r)``
      if one sequence is a prefix of the other); ``e = max(L_c, L_r)``;
    - ``loss_i = mean_{t in [d, e)} -log σ(c_t - r_t)``;
    - if the two sequences are identical, only the last real token is used (``d = L - 1``).

    Past the end of the shorter sequence its last real value is repeated. (The original code reads
    whatever the model emits on right-padding positions there, which depends on the padding side;
    repeating the final score gives the same loss for left and right padding.)
    ``L = mean_i loss_i``.

    Shapes: values / ids / masks ``[B, T]`` (chosen and rejected may have different ``T``).
    Metrics (detached scalars): as :func:`pairwise_loss`, with each sequence's score read at its
    last real token.
    """
    c = _compact_left(chosen_values, chosen_mask)
    r = _compact_left(rejected_values, rejected_mask)
    c_ids = _compact_left(chosen_ids, chosen_mask)
    r_ids = _compact_left(rejected_ids, rejected_mask)
    # Bring both sides to a common width T by repeating their final (already repeated) column.
    T = max(c.shape[-1], r.shape[-1])

    def widen(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == T:
            return x
        return torch.cat([x, x[:, -1:].expand(-1, T - x.shape[-1])], dim=-1)

    c, r, c_ids, r_ids = widen(c), widen(r), widen(c_ids), widen(r_ids)
    len_c = chosen_mask.bool().sum(dim=-1).clamp(min=1)  # [B]
    len_r = rejected_mask.bool().sum(dim=-1).clamp(min=1)
    min_len = torch.minimum(len_c, len_r)
    end = torch.maximum(len_c, len_r)
    t = torch.arange(T, device=c.device).unsqueeze(0)  # [1, T]

    differs = (c_ids != r_ids) & (t < min_len.unsqueeze(-1))  # [B, T]
    first_diff = torch.where(differs, t, torch.full_like(differs, T, dtype=t.dtype)).min(-1).values
    div = torch.minimum(first_diff, min_len)
    identical = (first_diff >= min_len) & (len_c == len_r)
    div = torch.where(identical, end - 1, div)

    window = (t >= div.unsqueeze(-1)) & (t < end.unsqueeze(-1))  # [B, T]
    per_pair = masked_mean(-F.logsigmoid(c - r), window, dim=-1)  # [B]
    loss = per_pair.mean()

    chosen_scores = last_token_values(chosen_values, chosen_mask)
    rejected_scores = last_token_values(rejected_values, rejected_mask)
    return loss, _pair_metrics(chosen_scores, rejected_scores)
