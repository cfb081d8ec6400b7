"""The reward trainer's losses, chosen by name, and one optimiser step's forward/backward
(``trainers/reward.py`` runs the loop): the value kind's objectives on per-token head values
(``pairwise``, ``dschat``, ``mixed``) and the likelihood kind's CPO objective."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from simple_rlhf.infra.distributed import Dist
from simple_rlhf.losses.reward import dschat_pairwise_loss, last_token_values, pairwise_loss
from simple_rlhf.models.reward import head_values, likelihood_scores
from simple_rlhf.trainers.reward_eval import pair_batch

if TYPE_CHECKING:
    from simple_rlhf.trainers.reward import RewardArgs


# ---- losses, chosen by name ---------------------------------------------------------------------

Objective = Callable[
    [torch.Tensor, dict[str, torch.Tensor], "RewardArgs"], tuple[torch.Tensor, dict]
]


def _pairwise_objective(values: torch.Tensor, batch: dict, args: RewardArgs):
    """Bradley–Terry on the last-token scores; ``values`` ``[2B, T]``, chosen rows first."""
    scores = last_token_values(values, batch["attention_mask"])  # [2B]
    chosen, rejected = scores.chunk(2)
    margin = torch.full_like(chosen, args.margin) if args.margin else None
    return pairwise_loss(chosen, rejected, margin=margin, center_coef=args.center_coef)


def _dschat_objective(values: torch.Tensor, batch: dict, args: RewardArgs):
    """DeepSpeed-Chat's token-wise pairwise loss on per-token values ``[2B, T]``."""
    vc, vr = values.chunk(2)
    ic, ir = batch["input_ids"].chunk(2)
    mc, mr = batch["attention_mask"].chunk(2)
    return dschat_pairwise_loss(vc, vr, ic, ir, mc, mr)


def _mixed_objective(values: torch.Tensor, batch: dict, args: RewardArgs):
    """``pairwise + λ · dschat`` on the same per-token values (λ = ``token_loss_coef``): the
    Bradley–Terry term orders the EOS scores, the token-wise term makes the value after every
    token of the two responses agree with the preference too. Metrics: the pairwise ones."""
    loss, metrics = _pairwise_objective(values, batch, args)
    token_loss, _ = _dschat_objective(values, batch, args)
    return loss + args.token_loss_coef * token_loss, metrics


def likelihood_objective(model: Any, batch: dict, args: RewardArgs):
    """A likelihood RM's loss on one pair batch ``[2B, T]`` (chosen rows first), called on
    ``model`` (the DDP / DeepSpeed wrapper): Bradley–Terry on the summed response log-probs
    ``-log σ(s_c - s_r - m)`` (CPO's preference term at β = 1) plus ``nll_coef`` x the mean over
    the chosen answers of their token-mean NLL (CPO's behaviour-cloning term)."""
    ids, mask, resp = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    sums = likelihood_scores(model, ids, mask, resp)  # [2B], the score the saved RM gives
    chosen, rejected = sums.chunk(2)
    margin = torch.full_like(chosen, args.margin) if args.margin else None
    loss, metrics = pairwise_loss(chosen, rejected, margin=margin, center_coef=args.center_coef)
    n = chosen.shape[0]
    nll = -(sums[:n] / resp[:n, 1:].sum(-1).clamp(min=1)).mean()
    metrics = {**metrics, "nll": nll.detach()}
    return (loss + args.nll_coef * nll if args.nll_coef else loss), metrics


OBJECTIVES: dict[str, Objective] = {
    "pairwise": _pairwise_objective,
    "dschat": _dschat_objective,
    "mixed": _mixed_objective,
}


def backward_step(
    model: Any,
    chunks: Sequence[Sequence[dict]],
    pad_id: int,
    args: RewardArgs,
    engine: Any = None,
    dist: Dist | None = None,
) -> tuple[float, dict[str, float], int]:
    """Forward and backward over this rank's micro-batches of one optimiser step.

    ``model`` is what the forward calls (``engine.model``: the DDP / DeepSpeed wrapper, so its
    gradient synchronisation runs); ``engine`` (optional) gives ``accumulate`` / ``backward``.
    Each micro-batch's loss is a mean over its pairs; it is weighted by
    ``w = B_micro · world / B_step`` with ``B_step`` the pairs of the step on all ranks, so the
    gradient (averaged over ranks) is that of the mean over every pair of the global step: batch 4
    x accumulation 1 equals batch 2 x accumulation 2 equals 2 ranks x batch 2. Returns the step's
    loss, its metrics (weighted alike, summed over ranks) and the real tokens seen on all ranks.
    """
    objective = OBJECTIVES[args.loss_type]
    world = dist.world_size if dist is not None else 1
    local = sum(len(c) for c in chunks)
    n_pairs = dist.all_reduce_sum([local])[0] if dist is not None else local
    items = engine.accumulate(chunks) if engine is not None else chunks
    loss_sum, stats_sum, tokens = 0.0, {}, 0
    for chunk in items:
        b = pair_batch(chunk, pad_id)
        if dist is not None:
            b = dist.to_device(b)
        if args.kind == "likelihood":
            loss, metrics = likelihood_objective(model, b, args)
        else:
            values = head_values(model, b["input_ids"], b["attention_mask"])  # [2B, T]
            loss, metrics = objective(values, b, args)
        w = len(chunk) / n_pairs
        scaled = loss * (w * world)
        if engine is not None:
            engine.backward(scaled)
        else:
            scaled.backward()
        loss_sum += float(loss.detach()) * w
        for k, v in metrics.items():
            stats_sum[k] = stats_sum.get(k, 0.0) + float(v) * w
        tokens += int(b["attention_mask"].sum())
    if dist is not None and dist.world_size > 1:
        keys = sorted(stats_sum)
        summed = dist.all_reduce_sum([loss_sum, tokens, *(stats_sum[k] for k in keys)])
        loss_sum, tokens = summed[0], summed[1]
        stats_sum = dict(zip(keys, summed[2:], strict=True))
    return loss_sum, stats_sum, int(tokens)
