"""From a :class:`Rollout` to policy-gradient experience: the one logprob/value computation.

Pieces, each usable alone (PPO uses them all; GRPO/RLOO/REINFORCE++ skip the critic):

* :func:`compute_logprobs` — per-token logprobs ``[B, R]`` of the sampled response tokens, logits
  divided by the sampling temperature (``softmax(z / tau)`` is what generated them), 0 on padding.
  Used for the actor (``old_logprobs``) and, inside :func:`reference`, the frozen reference.
* :func:`compute_values` / :func:`response_values` — critic values ``[B, R]``. **Off-by-one:** the
  value of response token ``t`` is ``V(s_t)``, the state *before* the token is chosen = the prompt
  plus ``response[:t]``, whose last token sits at column ``P + t - 1`` of ``input_ids`` (P = prompt
  width). So ``values = token_values(ids)[:, P-1 : P+R-1]``: the first value is read at the last
  prompt token, the value read at the final EOS is never used (the episode ends there, V = 0 after).
* :func:`score_responses` — the reward source on decoded texts -> ``scores [B]``; responses without
  EOS get ``missing_eos_penalty`` as their score (if set); then clipped to ``[-clip, clip]``.
* :func:`make_experience` — KL per token (``losses/kl.py``), token rewards with the score on the last
  real response token (``losses/advantages.py::token_rewards_from_scores``), optional reward
  whitening, advantages by GAE with the critic or by a named critic-free estimator, optional
  advantage whitening over the masked batch (``losses/reduce.py::masked_whiten``), and diagnostics.
* :func:`minibatches` / :func:`micro_batch_weight` — the update-side batch plumbing: shuffled
  minibatch indices per epoch, and the weight that makes gradient accumulation over micro-batches
  equal one big batch for every loss aggregation.

Degenerate responses (EOS as the first token: mask ``[1, 0, ...]``; or an all-zero mask) are
valid everywhere: the score lands on the EOS (or nowhere), GAE and whitening skip masked steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from simple_rlhf.losses.advantages import compute_advantages, gae, token_rewards_from_scores
from simple_rlhf.losses.kl import kl_penalty
from simple_rlhf.losses.ppo import explained_variance
from simple_rlhf.losses.reduce import masked_mean, masked_sum, masked_var, masked_whiten
from simple_rlhf.models.forward import response_logprobs, token_values
from simple_rlhf.rollout.generate import Rollout, SamplingArgs


@dataclasses.dataclass
class Experience:
    """A rollout batch with everything a policy-gradient update needs (one device)."""

    rollout: Rollout
    old_logprobs: torch.Tensor  # [B, R] actor logprobs at rollout time (temperature-scaled)
    ref_logprobs: torch.Tensor  # [B, R] frozen reference logprobs
    scores: torch.Tensor  # [B] sequence scores (after EOS penalty and clipping)
    kl: torch.Tensor  # [B, R] per-token KL estimate of old vs ref (0 on padding)
    token_rewards: torch.Tensor  # [B, R]
    advantages: torch.Tensor  # [B, R] (whitened if asked)
    returns: torch.Tensor | None = None  # [B, R] critic targets (GAE returns); None w/o critic
    values: torch.Tensor | None = None  # [B, R] critic values at rollout time; None w/o critic

    @property
    def mask(self) -> torch.Tensor:  # [B, R]
        return self.rollout.response_mask

    def __len__(self) -> int:
        return len(self.rollout)

    def index(self, idx: torch.Tensor | Sequence[int]) -> Experience:
        """The rows ``idx`` (same widths: padding columns are kept, so forwards are unchanged)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = (
                v.index(idx) if isinstance(v, Rollout) else (None if v is None else v[idx])
            )
        return Experience(**out)


def logprob_temperature(sampling: SamplingArgs) -> float:
    """The temperature to recompute logprobs with: the sampling one (1.0 for greedy decoding)."""
    return sampling.temperature if sampling.temperature > 0 else 1.0


def _chunks(n: int, size: int) -> Iterator[slice]:
    for s in range(0, n, max(size, 1)):
        yield slice(s, min(s + size, n))


def policy_logprobs(
    model: Any,
    rollout: Rollout,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprobs ``[B, R]`` (and entropy ``[B, R]``) of the response tokens, with grad, 0 on pad.

    One full-sequence forward of ``prompt + response`` with padding-aware positions
    (``models/forward.py``); column ``t`` is ``log softmax(z_{P+t-1} / tau)[response_t]``.
    """
    logprobs, entropy = response_logprobs(
        model,
        rollout.input_ids,
        rollout.attention_mask,
        rollout.prompt_ids.shape[1],
        temperature=temperature,
        with_entropy=with_entropy,
    )
    keep = rollout.response_mask.bool()
    logprobs = torch.where(keep, logprobs, torch.zeros_like(logprobs))
    if entropy is not None:
        entropy = torch.where(keep, entropy, torch.zeros_like(entropy))
    return logprobs, entropy


@torch.no_grad()
def compute_logprobs(
    model: Any,
    rollout: Rollout,
    *,
    temperature: float = 1.0,
    batch_size: int = 16,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`policy_logprobs` without grad, in eval mode, ``batch_size`` rows at a time.

    Returns ``(logprobs [B, R], entropy [B, R] or None)``.
    """
    was_training = model.training
    model.eval()
    try:
        parts = [
            policy_logprobs(
                model,
                rollout.index(range(s.start, s.stop)),
                temperature=temperature,
                with_entropy=with_entropy,
            )
            for s in _chunks(len(rollout), batch_size)
        ]
    finally:
        model.train(was_training)
    logprobs = torch.cat([lp for lp, _ in parts])
    entropy = torch.cat([e for _, e in parts]) if with_entropy else None
    return logprobs, entropy


@contextlib.contextmanager
def reference(actor: Any, ref_model: Any | None) -> Iterator[Any]:
    """The frozen reference: ``ref_model``, or (LoRA, ``ref_model=None``) the actor with its
    adapter disabled, i.e. the initial weights, with no second copy held."""
    if ref_model is not None:
        yield ref_model
        return
    if not hasattr(actor, "disable_adapter"):
        raise ValueError("no reference model given and the actor has no LoRA adapter to disable")
    with actor.disable_adapter():
        yield actor


def response_values(critic: Any, rollout: Rollout) -> torch.Tensor:
    """Critic values ``[B, R]`` with grad: ``V(s_t)`` read at column ``P + t - 1`` (see module doc),
    0 on padding."""
    P = rollout.prompt_ids.shape[1]
    R = rollout.response_ids.shape[1]
    all_values = token_values(critic, rollout.input_ids, rollout.attention_mask)  # [B, P+R]
    values = all_values[:, P - 1 : P + R - 1]  # [B, R] state before each response token
    keep = rollout.response_mask.bool()
    return torch.where(keep, values, torch.zeros_like(values))


@torch.no_grad()
def compute_values(critic: Any, rollout: Rollout, *, batch_size: int = 16) -> torch.Tensor:
    """:func:`response_values` without grad, in eval mode, in chunks."""
    was_training = critic.training
    critic.eval()
    try:
        parts = [
            response_values(critic, rollout.index(range(s.start, s.stop)))
            for s in _chunks(len(rollout), batch_size)
        ]
    finally:
        critic.train(was_training)
    return torch.cat(parts)


def score_responses(
    reward_fn: Callable[..., Any],
    prompts: Sequence[Any],
    responses: Sequence[str],
    has_eos: torch.Tensor,
    *,
    fields: dict[str, list[Any]] | None = None,
    missing_eos_penalty: float | None = None,
    clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``scores [B]`` from a reward source, then the EOS penalty and the clip.

    ``score_i = missing_eos_penalty`` where ``has_eos[i]`` is False (if a penalty is set), then
    ``clamp(score, -clip, clip)`` (if set). If the source has an ``evaluate`` method
    (:class:`~simple_rlhf.rollout.rewards.CombinedReward`), the per-source means are returned as
    ``reward/<name>_mean`` metrics.
    """
    fields = fields or {}
    metrics: dict[str, float] = {}
    if hasattr(reward_fn, "evaluate"):
        raw, per_source = reward_fn.evaluate(list(prompts), list(responses), **fields)
        metrics.update(reward_fn.metrics(per_source))
    else:
        raw = reward_fn(list(prompts), list(responses), **fields)
    scores = torch.tensor([float(s) for s in raw], dtype=torch.float32)  # [B]
    if len(scores) != len(responses):
        raise ValueError(f"reward source returned {len(scores)} scores for {len(responses)}")
    metrics["reward/raw_score_mean"] = float(scores.mean()) if len(scores) else 0.0
    has_eos = has_eos.to(torch.bool).cpu()
    if missing_eos_penalty is not None:
        scores = torch.where(has_eos, scores, torch.full_like(scores, missing_eos_penalty))
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    return scores, metrics


def sequence_kl(kl: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` KL of each response: the per-token estimates summed over its real tokens."""
    return masked_sum(kl, mask, dim=-1)


def make_experience(
    rollout: Rollout,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    scores: torch.Tensor,
    *,
    values: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k1",
    kl_in_reward: bool = True,
    advantage_estimator: str = "gae",
    group_size: int = 1,
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten_rewards: bool = False,
    whiten_advantages: bool = True,
) -> tuple[Experience, dict[str, float]]:
    """Assemble an :class:`Experience` from logprobs, values and scores (all ``[B, R]`` / ``[B]``).

    1. ``kl_t = estimator(old_logprobs_t, ref_logprobs_t)`` (``losses/kl.py``), 0 on padding.
    2. ``r_t = -kl_coef * kl_t + [t = last real token] * score`` (``kl_in_reward``; otherwise only
       the score, and the trainer puts KL in the loss).
    3. Optional reward whitening: ``r <- (r - mean) / std + mean`` over real tokens (rescaled,
       mean kept; TRL's ``whiten_rewards``).
    4. ``advantage_estimator="gae"``: ``A, returns = gae(r, values, mask, gamma, lam)`` (needs
       ``values``); any other name comes from ``ADVANTAGE_ESTIMATORS`` (scores + KL, no critic;
       reward whitening does not apply to them).
    5. Optional advantage whitening ``(A - mean) / std`` over every real token of the batch.
    """
    mask = rollout.response_mask
    keep = mask.bool()
    scores = scores.to(old_logprobs.device, torch.float32)
    kl = kl_penalty(old_logprobs, ref_logprobs, kl_estimator)  # [B, R]
    kl = torch.where(keep, kl, torch.zeros_like(kl))
    reward_kl_coef = kl_coef if kl_in_reward else 0.0
    token_rewards = token_rewards_from_scores(scores, mask, kl, reward_kl_coef)  # [B, R]
    returns = None
    if advantage_estimator == "gae":
        if values is None:
            raise ValueError("GAE needs critic values; pass values= or a critic-free estimator")
        if whiten_rewards:
            token_rewards = masked_whiten(token_rewards, mask, shift_mean=False)
        advantages, returns = gae(token_rewards, values, mask, gamma, lam)  # [B, R] each
    else:
        advantages = compute_advantages(
            advantage_estimator,
            scores,
            mask,
            group_size,
            kl=kl if kl_in_reward else None,
            kl_coef=reward_kl_coef,
            gamma=gamma,
        )
    raw_adv = advantages
    if whiten_advantages:
        advantages = masked_whiten(advantages, mask, shift_mean=True)
    exp = Experience(
        rollout=rollout,
        old_logprobs=old_logprobs,
        ref_logprobs=ref_logprobs,
        scores=scores,
        kl=kl,
        token_rewards=token_rewards,
        advantages=advantages,
        returns=returns,
        values=values,
    )
    seq_kl = sequence_kl(kl, mask)  # [B]
    lengths = mask.sum(dim=-1).float()
    metrics = {
        "reward/score_mean": float(scores.mean()),
        "reward/score_std": float(scores.std()) if len(scores) > 1 else 0.0,
        "objective/kl": float(seq_kl.mean()),
        "objective/kl_per_token": float(masked_mean(kl, mask)),
        "objective/kl_coef": float(kl_coef),
        "objective/rlhf_reward": float((scores - kl_coef * seq_kl).mean()),
        "advantages/mean": float(masked_mean(raw_adv, mask)),
        "advantages/std": float(masked_var(raw_adv, mask).sqrt()),
        "rollout/response_len": float(lengths.mean()),
        "rollout/eos_rate": float(rollout.has_eos.float().mean()),
        # empty = no token before EOS (or no token at all)
        "rollout/empty_rate": float(
            (((lengths == 1) & rollout.has_eos.to(lengths.device)) | (lengths == 0)).float().mean()
        ),
    }
    if returns is not None and values is not None:
        metrics["critic/explained_variance"] = float(explained_variance(values, returns, mask))
        metrics["critic/returns_mean"] = float(masked_mean(returns, mask))
        metrics["critic/values_mean_rollout"] = float(masked_mean(values, mask))
    return exp, metrics


# --- update-side plumbing -------------------------------------------------------------------------


def minibatches(n: int, minibatch_size: int, seed: int) -> list[list[int]]:
    """Row indices of a buffer of ``n`` rows, shuffled with ``seed``, cut into minibatches.

    ``n`` must be a multiple of ``minibatch_size`` (the trainer validates its batch plan).
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[s : s + minibatch_size] for s in range(0, n, minibatch_size)]


def micro_batch_weight(
    aggregation: str, micro_mask: torch.Tensor, mini_mask: torch.Tensor
) -> float:
    """Weight of a micro-batch's aggregated loss so that summing weighted micro-batch losses equals
    the loss of the whole minibatch (batch 8 x accumulation 1 == batch 2 x accumulation 4).

    * ``token_mean``: ``#tokens(micro) / #tokens(minibatch)``;
    * ``seq_mean_token_mean``: ``#non-empty rows(micro) / #non-empty rows(minibatch)``;
    * ``seq_mean_token_sum``, ``seq_mean_token_sum_norm``: ``#rows(micro) / #rows(minibatch)``.
    """
    if aggregation == "token_mean":
        num, den = micro_mask.sum(), mini_mask.sum()
    elif aggregation == "seq_mean_token_mean":
        num, den = (micro_mask.sum(-1) > 0).sum(), (mini_mask.sum(-1) > 0).sum()
    elif aggregation in ("seq_mean_token_sum", "seq_mean_token_sum_norm"):
        num, den = micro_mask.shape[0], mini_mask.shape[0]
    else:
        raise ValueError(f"unknown loss aggregation {aggregation!r}")
    return float(num) / max(float(den), 1.0)
