"""One PPO update over a rollout buffer: actor and critic minibatch steps, PPO-ptx, the actor EMA.

``ppo_update`` runs ``ppo_epochs`` passes over the buffer, reshuffled each pass; per minibatch one
actor step (clipped surrogate, optional dual clip, entropy bonus, KL-in-loss and PPO-ptx SFT loss;
shared with the critic-free trainers through ``trainers/online.py::policy_backward``) and one
critic step (clipped value loss times ``vf_coef``), each accumulated over micro-batches with
weights that make the step equal to one over the whole minibatch, each with its own optimiser,
schedule and gradient clipping.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from simple_rlhf.data.tokenize import IGNORE_INDEX, collate_sft
from simple_rlhf.losses.ppo import value_loss
from simple_rlhf.losses.sft import sft_loss
from simple_rlhf.models.forward import forward
from simple_rlhf.models.logprobs import token_logprobs
from simple_rlhf.rollout import experience as xp
from simple_rlhf.trainers import common
from simple_rlhf.trainers.online import (
    Learner,
    PolicyLossSpec,
    accumulate,
    clip_and_step,
    policy_backward,
)
from simple_rlhf.trainers.online_dist import reduce_update_metrics
from simple_rlhf.trainers.ppo_config import BatchPlan, PPOLossArgs


def _ptx_logprobs(actor: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p [B, T-1], mask [B, T-1])`` of the labelled tokens of a step-1 batch."""
    logits = forward(actor, batch["input_ids"], batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]  # [B, T-1]: logits[:, t] predicts token t + 1
    return token_logprobs(logits[:, :-1], labels), labels != IGNORE_INDEX


def ptx_loss(actor: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """PPO-ptx: token-mean SFT negative log-likelihood of a step-1 batch (response tokens)."""
    loss, _ = sft_loss(*_ptx_logprobs(actor, batch))
    return loss


def ptx_nll_sum(actor: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """``(sum_{b,t} m_bt (-log p_bt), sum_{b,t} m_bt)`` over the labelled tokens of a step-1
    batch: a rank's share of the token mean over a global (sharded) PPO-ptx batch."""
    logprobs, mask = _ptx_logprobs(actor, batch)
    return torch.where(mask, -logprobs, torch.zeros_like(logprobs)).sum(), int(mask.sum())


def cycle_ptx(
    examples: Sequence[dict],
    batch_size: int,
    pad_id: int,
    seed: int,
    dist: Any = None,
    start: int = 0,
) -> Iterator:
    """Collated step-1 SFT batches forever, reshuffled each pass (``seed + pass``); the first
    ``start`` batches are skipped (a resumed run continues the stream).

    Several ranks (``dist``): the global stream of batches of ``batch_size x world_size``
    examples (the order one process draws with that batch size), identical on every rank; each
    rank collates its contiguous slice (:meth:`Dist.shard`). A last chunk with fewer examples
    than ranks is skipped on every rank (a rank would have nothing to forward)."""
    world = dist.world_size if dist is not None else 1
    epoch, k = 0, 0
    while True:
        for chunk in common.batches(examples, batch_size * world, shuffle=True, seed=seed + epoch):
            if len(chunk) < world:
                continue
            if k >= start:
                yield collate_sft(dist.shard(chunk) if world > 1 else chunk, pad_id)
            k += 1
        epoch += 1


def policy_spec(args: PPOLossArgs, kl_coef: float, agg_constant: float | None) -> PolicyLossSpec:
    """The actor's loss terms: KL in the loss (with the controller's current ``kl_coef``) only
    with ``kl_in_loss``."""
    return PolicyLossSpec(
        aggregation=args.loss_aggregation,
        clip_low=args.clip_range,
        clip_high=args.clip_range if args.clip_range_high is None else args.clip_range_high,
        dual_clip=args.dual_clip,
        agg_constant=agg_constant,
        entropy_coef=args.entropy_coef,
        kl_coef=kl_coef if args.kl_in_loss else 0.0,
        kl_estimator=args.kl_estimator,
    )


def actor_minibatch_step(
    actor: Learner,
    mb: xp.Experience,
    micro_size: int,
    args: PPOLossArgs,
    *,
    temperature: float,
    kl_coef: float,
    ptx_batches: Sequence[dict[str, torch.Tensor]] = (),
    agg_constant: float | None = None,
    norm_mb: xp.Experience | None = None,
    scale: float = 1.0,
) -> dict[str, float]:
    """One actor optimiser step over the minibatch ``mb``, accumulated over micro-batches.
    Several ranks (``actor.engine``): ``mb`` is this rank's slice of the global minibatch
    ``norm_mb`` and ``scale`` the world size (see ``online.py::policy_backward``).

    ``loss = aggregate(policy loss) - entropy_coef * aggregate(entropy)
    [+ kl_coef * aggregate(KL(pi || ref)) if kl_in_loss] [+ ptx_coef * mean_j SFT loss_j]``; each
    micro-batch's policy loss is weighted by :func:`~simple_rlhf.rollout.experience.
    micro_batch_weight` so the step equals one over the whole minibatch.
    """
    spec = policy_spec(args, kl_coef, agg_constant)
    if actor.engine is not None:  # several ranks: one backward per micro-batch, ptx included
        return _engine_actor_step(
            actor, mb, micro_size, spec, args, temperature, ptx_batches, norm_mb, scale
        )
    acc = policy_backward(actor.model, mb, micro_size, spec, temperature=temperature)
    if args.ptx_coef > 0 and ptx_batches:
        n_micro = -(-len(mb) // micro_size)
        total = 0.0
        for batch in ptx_batches[:n_micro]:
            ptx = ptx_loss(actor.model, batch)
            (args.ptx_coef * ptx / n_micro).backward()
            total += float(ptx.detach())
        acc["policy/ptx_loss"] = total / min(n_micro, len(ptx_batches))
    acc["policy/grad_norm"] = clip_and_step(actor)
    return acc


def _engine_actor_step(
    actor: Learner,
    mb: xp.Experience,
    micro_size: int,
    spec: PolicyLossSpec,
    args: PPOLossArgs,
    temperature: float,
    ptx_batches: Sequence[dict[str, torch.Tensor]],
    norm_mb: xp.Experience | None,
    scale: float,
) -> dict[str, float]:
    """The actor step through an engine: PPO-ptx joins micro-batch ``j``'s backward.

    The ptx batches are this rank's slices of global batches (:func:`cycle_ptx`); with ``n_j``
    the global count of labelled tokens of batch ``j`` (all-reduced) the rank backpropagates
    ``scale * ptx_coef * NLL_sum_j(rank) / (n_j * n_micro)``: summed over ranks (the engine
    averages, ``scale`` = world size undoes it) that is ``ptx_coef * mean_j token_mean_j``, the
    single-process loss on the same global batches. The metric is the rank's share
    ``NLL_sum_j(rank) / n_j`` (``ppo_update`` adds the ranks)."""
    n_micro = -(-len(mb) // micro_size)
    use_ptx = args.ptx_coef > 0 and len(ptx_batches) > 0
    batches = list(ptx_batches[:n_micro]) if use_ptx else []
    counts = [float((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches]
    counts = actor.engine.dist.all_reduce_sum(counts) if counts else []

    def ptx_term(j: int) -> tuple[torch.Tensor, dict[str, float]]:
        if j >= len(batches):
            return torch.zeros(()), {}
        nll_sum, _ = ptx_nll_sum(actor.model, batches[j])
        n_j = max(counts[j], 1.0)
        term = args.ptx_coef * nll_sum / n_j * (scale / n_micro)
        return term, {"policy/ptx_loss": float(nll_sum.detach()) / n_j / len(batches)}

    acc = policy_backward(
        actor.model, mb, micro_size, spec, temperature=temperature, learner=actor,
        norm_mb=norm_mb, scale=scale, extra_loss=ptx_term if use_ptx else None,
    )  # fmt: skip
    acc["policy/grad_norm"] = actor.step()
    return acc


def critic_values(model: Any, rollout: Any) -> torch.Tensor:
    """:func:`~simple_rlhf.rollout.experience.response_values` computed by calling ``model``
    itself (``models/reward.py::head_values``), so a DDP / DeepSpeed wrapper runs the forward
    and synchronises the gradients: ``V(s_t)`` at column ``P + t - 1``, ``[B, R]``, 0 on pad."""
    from simple_rlhf.models.reward import head_values

    P, R = rollout.prompt_ids.shape[1], rollout.response_ids.shape[1]
    values = head_values(model, rollout.input_ids, rollout.attention_mask)[:, P - 1 : P + R - 1]
    keep = rollout.response_mask.bool()
    return torch.where(keep, values, torch.zeros_like(values))


def critic_minibatch_step(
    critic: Learner,
    mb: xp.Experience,
    micro_size: int,
    args: PPOLossArgs,
    *,
    norm_mb: xp.Experience | None = None,
    scale: float = 1.0,
) -> dict[str, float]:
    """One critic optimiser step: ``vf_coef * clipped value loss`` towards the GAE returns.
    Several ranks (``critic.engine``): weights relative to the global minibatch ``norm_mb``,
    backward of ``scale`` (world size) times the loss, forwards through the engine's wrapper."""
    agg, acc = args.loss_aggregation, {}
    norm_mask = (norm_mb if norm_mb is not None else mb).mask
    micros = [
        mb.index(range(s, min(s + micro_size, len(mb)))) for s in range(0, len(mb), micro_size)
    ]
    for micro in critic.accumulate(micros):
        w = xp.micro_batch_weight(agg, micro.mask, norm_mask)
        if critic.engine is None:
            values = xp.response_values(critic.model, micro.rollout)  # [b, R]
        else:
            values = critic_values(critic.model, micro.rollout)
        loss, m = value_loss(
            values, micro.values, micro.returns, micro.mask, clip_range=args.value_clip,
            aggregation=agg,
        )  # fmt: skip
        critic.backward(
            args.vf_coef * loss * w * scale if scale != 1.0 else args.vf_coef * loss * w
        )
        accumulate(acc, m, w)
    acc["critic/grad_norm"] = critic.step()
    return acc


class EMA:
    """Exponential moving average of a model's trainable weights: ``e <- d * e + (1 - d) * w``."""

    def __init__(self, model: Any, decay: float) -> None:
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]  # what moves
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: Any) -> None:
        live = dict(model.named_parameters())
        for name, p in self.model.named_parameters():
            src = live[name]
            if src.requires_grad:
                p.lerp_(src.detach(), 1.0 - self.decay)


def ppo_update(
    exp: xp.Experience,
    actor: Learner | None,
    critic: Learner | None,
    plan: BatchPlan,
    args: PPOLossArgs,
    *,
    temperature: float,
    kl_coef: float,
    seed: int,
    ptx_iter: Iterator[dict[str, torch.Tensor]] | None = None,
    ema: EMA | None = None,
    agg_constant: float | None = None,
    dist: Any = None,
) -> dict[str, float]:
    """``ppo_epochs`` passes over the buffer, reshuffled each pass (``seed + epoch``), one actor and
    one critic optimiser step per minibatch. ``actor=None`` trains the critic only (warm-up).
    Returns the metrics averaged over the minibatches.

    Several ranks (``dist``, ``infra/distributed.py::Dist``): every rank holds the whole (global)
    buffer and draws the same minibatches; rank ``r`` runs its contiguous slice
    (``dist.shard``) of each, normalised by the global minibatch and scaled by the world size,
    so a step equals the single-process step on the same buffer; the weighted metric sums are
    then added over ranks (gradient norms are global already)."""
    totals: dict[str, float] = {}
    n_steps = 0
    world = dist.world_size if dist is not None else 1
    for learner in (actor, critic):
        if learner is not None:
            learner.model.train()
    for epoch in range(plan.ppo_epochs):
        for idx in xp.minibatches(len(exp), plan.minibatch, seed + epoch):
            if world > 1:
                norm_mb, mb = exp.index(idx), exp.index(dist.shard(idx))
                kw: dict[str, Any] = {"norm_mb": norm_mb, "scale": float(world)}
            else:
                mb, kw = exp.index(idx), {}
            if actor is not None:
                ptx = [next(ptx_iter) for _ in range(plan.accumulation)] if ptx_iter else []
                m = actor_minibatch_step(
                    actor, mb, plan.micro_batch, args, temperature=temperature, kl_coef=kl_coef,
                    ptx_batches=ptx, agg_constant=agg_constant, **kw,
                )  # fmt: skip
                accumulate(totals, m)
                if ema is not None:  # the HF module (not a DDP / DeepSpeed wrapper)
                    ema.update(actor.model if actor.engine is None else actor.engine.module)
            if critic is not None:
                m = critic_minibatch_step(critic, mb, plan.micro_batch, args, **kw)
                accumulate(totals, m)
            n_steps += 1
    if world > 1:  # per-rank shares added; the gradient norm (global already) averaged
        totals = reduce_update_metrics(dist, totals)
    return {k: v / max(n_steps, 1) for k, v in totals.items()}
