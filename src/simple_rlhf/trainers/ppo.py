"""Step 3: PPO with an actor, a critic, a frozen reference and a reward source (RM and/or functions).

Variant (InstructGPT / Ziegler et al. 2019 style, token-level MDP): each iteration samples a rollout
batch with the one generation engine (``rollout/generate.py``: left-padded prompts, KV cache,
responses cut after the first EOS), scores it with the reward source (``rollout/rewards.py``: RM
read at the EOS, normalised with its stored mean/std, clipped; responses with no EOS can get
``--missing-eos-penalty``), turns it into experience (``rollout/experience.py``: actor logprobs
recomputed with logits / sampling temperature, reference logprobs, critic values ``V(s_t)`` read at
the token *before* each response token, per-token KL ``k1``/``k3`` in the reward with a fixed or
adaptive coefficient (or ``--kl-in-loss``), the score on the last real token, GAE, advantage
whitening over the masked batch), then runs ``--ppo-epochs`` passes over the buffer reshuffled each
epoch: minibatches of ``per_device_train_batch_size x gradient_accumulation_steps`` responses, a
clipped policy surrogate (optional dual clip, entropy bonus, PPO-ptx SFT loss) on the actor and a
clipped value loss on the critic, each with its own AdamW, learning rate, scheduler and gradient
clipping. Dropout is off in all four models. The reference is a frozen copy of the initial actor;
with LoRA (``only_optimize_lora``) it is the actor with the adapter disabled (no second copy).
Deviations: no distributed training yet (one process); one "step" of logging/eval/save counts
rollout iterations (one rollout + its PPO epochs), not optimiser steps; the critic is a separate
model (no shared backbone), fully fine-tuned even when the actor uses LoRA.

One CPU, tiny default (SFT model from step 1, RM from step 2; ~50 CPU-seconds, 1-2 minutes;
gold 0.755 -> 0.90 greedy, see benchmarks/ppo_results.md)::

    simple-rlhf ppo --actor-model-name-or-path outputs/sft --reward-model outputs/reward \\
        --output-dir outputs/ppo

With a Python reward instead of (or added to) the RM::

    simple-rlhf ppo --actor-model-name-or-path outputs/sft --reward-funcs tiny_gold

A real model, LoRA actor (reference = adapter disabled)::

    simple-rlhf ppo --actor-model-name-or-path outputs/opt-sft --reward-model outputs/opt-rm \\
        --data-path Dahoas/rm-static --lora-dim 64 --learning-rate 1e-5 \\
        --critic-learning-rate 5e-6 --max-new-tokens 256 --max-seq-len 512

Several GPUs: not yet supported by this trainer (runs in one process).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from simple_rlhf.config import (
    DTYPES,
    ConfigError,
    DataArgs,
    LogArgs,
    LoraArgs,
    OptimArgs,
    fld,
    section,
)
from simple_rlhf.data.pipeline import load_encoded
from simple_rlhf.data.tokenize import IGNORE_INDEX, collate_sft
from simple_rlhf.infra.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_hf_model,
)
from simple_rlhf.infra.logging import MetricsLogger, format_metrics
from simple_rlhf.infra.seed import set_seed
from simple_rlhf.losses.kl import KL_ESTIMATORS, AdaptiveKLController, FixedKLController, kl_penalty
from simple_rlhf.losses.ppo import policy_loss, value_loss
from simple_rlhf.losses.reduce import AGGREGATIONS, aggregate, masked_mean
from simple_rlhf.losses.sft import sft_loss
from simple_rlhf.models.forward import forward
from simple_rlhf.models.loading import (
    count_parameters,
    disable_dropout,
    load_causal_lm,
    load_tokenizer,
)
from simple_rlhf.models.logprobs import token_logprobs
from simple_rlhf.models.lora import apply_lora
from simple_rlhf.models.reward import load_reward_model
from simple_rlhf.rollout import experience as xp
from simple_rlhf.rollout.generate import SamplingArgs, decode_responses, generate
from simple_rlhf.rollout.rewards import build_reward, fields_to_columns
from simple_rlhf.trainers import common

# --- configuration ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PPOModelArgs:
    """The actor, critic and reward model."""

    actor_model_name_or_path: str = fld(
        "tiny", "the policy to train (normally the SFT model of step 1); also the reference"
    )
    critic_model_name_or_path: str | None = fld(
        None, "critic initialisation (None: the reward model, or the actor if there is no RM)"
    )
    reward_model: str | None = fld(None, "reward model folder from step 2 (simple-rlhf reward)")
    tokenizer_name_or_path: str | None = fld(None, "tokenizer (default: the actor's)")
    trust_remote_code: bool = fld(False, "allow custom modelling code shipped with a Hub model")
    dtype: str = fld("float32", "weights and compute dtype: float32, bfloat16 or float16")
    gradient_checkpointing: bool = fld(False, "recompute activations in backward (actor, critic)")

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")


@dataclasses.dataclass(frozen=True)
class PPORewardArgs:
    """Where the scores come from and how they are shaped."""

    reward_funcs: list[str] = fld(
        [], "reward functions: built-in names (tiny_gold), module:function or file.py:function"
    )
    reward_weights: list[float] = fld(
        [], "weights of the reward sources, RM first then functions (default: all 1)"
    )
    normalize_reward: bool = fld(True, "normalise RM scores with the mean/std stored with the RM")
    reward_clip: float | None = fld(5.0, "clip scores to [-c, c] (None: no clipping)")
    missing_eos_penalty: float | None = fld(
        None, "score given to responses that never emit EOS (None: keep their score)"
    )
    whiten_rewards: bool = fld(
        False, "rescale token rewards to unit std over the batch (mean kept) before GAE"
    )


@dataclasses.dataclass(frozen=True)
class PPOBatchArgs:
    """Batch semantics (see the start-up echo). Minibatch = per_device_train_batch_size x
    gradient_accumulation_steps responses per optimiser step."""

    prompts_per_rollout: int = fld(32, "prompts sampled per rollout (PPO iteration)")
    responses_per_prompt: int = fld(1, "responses sampled per prompt")
    ppo_epochs: int = fld(2, "passes over each rollout buffer, reshuffled each pass")
    num_rollouts: int | None = fld(
        60, "rollout iterations to run (None: max_steps, else num_train_epochs over the prompts)"
    )
    forward_batch_size: int = fld(32, "rows per no-grad forward (logprobs, values of a rollout)")


@dataclasses.dataclass(frozen=True)
class PPOLossArgs:
    """KL control, advantages and the PPO losses."""

    kl_coef: float = fld(0.2, "KL penalty coefficient beta (initial value if adaptive)")
    kl_estimator: str = fld("k1", "per-token KL estimator: k1, k2, k3 or abs (losses/kl.py)")
    adaptive_kl: bool = fld(False, "adapt beta towards kl_target (Ziegler et al. 2019)")
    kl_target: float = fld(6.0, "target KL per response of the adaptive controller")
    kl_horizon: int = fld(10000, "horizon (responses) of the adaptive controller")
    kl_in_loss: bool = fld(False, "put beta * KL in the policy loss instead of the reward")
    gamma: float = fld(1.0, "discount of GAE")
    lam: float = fld(0.95, "lambda of GAE")
    whiten_advantages: bool = fld(True, "whiten advantages over the masked rollout batch")
    clip_range: float = fld(0.2, "policy ratio clip epsilon (low side, and high if not set)")
    clip_range_high: float | None = fld(None, "upper clip epsilon (None: clip_range)")
    dual_clip: float | None = fld(None, "dual-clip constant c > 1 for negative advantages")
    value_clip: float | None = fld(0.2, "value clip epsilon (None: unclipped value loss)")
    vf_coef: float = fld(0.5, "value loss coefficient")
    entropy_coef: float = fld(0.0, "entropy bonus coefficient (0: off)")
    loss_aggregation: str = fld("token_mean", "loss reduction: " + ", ".join(AGGREGATIONS))
    critic_learning_rate: float = fld(5e-4, "critic peak learning rate")
    critic_lr_scheduler_type: str | None = fld(None, "critic schedule (None: the actor's)")
    critic_warmup_rollouts: int = fld(0, "first rollouts train only the critic")
    ptx_coef: float = fld(0.0, "PPO-ptx: weight of the SFT loss on step-1 data (0: off)")
    ema_decay: float | None = fld(None, "keep an EMA of the actor (e.g. 0.99), saved in actor_ema/")


@dataclasses.dataclass(frozen=True)
class PPOMonitorArgs:
    """Evaluation and warnings."""

    gold_eval_prompts: int = fld(64, "held-out tiny-task prompts for gold evaluation (0: off)")
    sample_every: int = fld(10, "print sample prompt/response pairs every N rollouts (0: off)")
    kl_warn: float = fld(10.0, "warn when the KL per response exceeds this")
    entropy_warn: float = fld(0.05, "warn when the mean token entropy falls below this")
    eos_rate_warn: float = fld(0.5, "warn when the EOS rate falls below this")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO (step 3)."""

    model: PPOModelArgs = section(PPOModelArgs)
    reward: PPORewardArgs = section(PPORewardArgs)
    data: DataArgs = section(DataArgs)
    sampling: SamplingArgs = section(lambda: SamplingArgs(max_new_tokens=48, temperature=1.0))
    batch: PPOBatchArgs = section(PPOBatchArgs)
    ppo: PPOLossArgs = section(PPOLossArgs)
    optim: OptimArgs = section(
        lambda: OptimArgs(
            learning_rate=2e-4,
            lr_scheduler_type="constant",
            warmup_ratio=0.0,
            per_device_train_batch_size=8,
            gradient_accumulation_steps=1,
        )
    )
    lora: LoraArgs = section(LoraArgs)
    log: LogArgs = section(lambda: LogArgs(output_dir="outputs/ppo", logging_steps=1))
    monitor: PPOMonitorArgs = section(PPOMonitorArgs)

    def __post_init__(self) -> None:
        validate(self)


def validate(cfg: PPOConfig) -> None:
    """Cross-section checks with messages that say what to change."""
    b, p, o = cfg.batch, cfg.ppo, cfg.optim
    if not cfg.model.reward_model and not cfg.reward.reward_funcs:
        raise ConfigError("no reward: set --reward-model (an RM folder) and/or --reward-funcs")
    n_sources = bool(cfg.model.reward_model) + len(cfg.reward.reward_funcs)
    if cfg.reward.reward_weights and len(cfg.reward.reward_weights) != n_sources:
        raise ConfigError(
            f"reward_weights: {len(cfg.reward.reward_weights)} weights for {n_sources} reward "
            "sources (the RM first, then each function)"
        )
    for name in ("prompts_per_rollout", "responses_per_prompt", "ppo_epochs", "forward_batch_size"):
        if getattr(b, name) < 1:
            raise ConfigError(f"{name}: must be >= 1")
    if b.num_rollouts is not None and b.num_rollouts < 0:
        raise ConfigError("num_rollouts: must be >= 0")
    rollout = b.prompts_per_rollout * b.responses_per_prompt
    mini = o.per_device_train_batch_size * o.gradient_accumulation_steps
    if rollout % mini:
        raise ConfigError(
            f"the rollout batch ({b.prompts_per_rollout} prompts x {b.responses_per_prompt} "
            f"responses = {rollout}) must be a multiple of the minibatch "
            f"(per_device_train_batch_size {o.per_device_train_batch_size} x "
            f"gradient_accumulation_steps {o.gradient_accumulation_steps} = {mini})"
        )
    if p.kl_estimator not in KL_ESTIMATORS:
        raise ConfigError(
            f"kl_estimator: {p.kl_estimator!r} is not one of {', '.join(KL_ESTIMATORS)}"
        )
    if p.loss_aggregation not in AGGREGATIONS:
        raise ConfigError(
            f"loss_aggregation: {p.loss_aggregation!r} is not one of {', '.join(AGGREGATIONS)}"
        )
    schedules = ("linear", "cosine", "constant", "constant_with_warmup")
    if p.critic_lr_scheduler_type is not None and p.critic_lr_scheduler_type not in schedules:
        raise ConfigError(
            f"critic_lr_scheduler_type: {p.critic_lr_scheduler_type!r} is not one of "
            f"{', '.join(schedules)}"
        )
    if p.critic_learning_rate <= 0:
        raise ConfigError("critic_learning_rate: must be > 0")
    if p.kl_coef < 0:
        raise ConfigError("kl_coef: must be >= 0")
    if p.adaptive_kl and (p.kl_target <= 0 or p.kl_horizon <= 0):
        raise ConfigError("adaptive_kl needs kl_target > 0 and kl_horizon > 0")
    if p.dual_clip is not None and p.dual_clip <= 1:
        raise ConfigError("dual_clip: must be > 1")
    if not 0 <= p.lam <= 1 or not 0 <= p.gamma <= 1:
        raise ConfigError("gamma and lam must be in [0, 1]")
    if p.ema_decay is not None and not 0 < p.ema_decay < 1:
        raise ConfigError("ema_decay: must be in (0, 1)")
    if cfg.reward.reward_clip is not None and cfg.reward.reward_clip <= 0:
        raise ConfigError("reward_clip: must be > 0 (or None)")
    if cfg.data.max_prompt_len + cfg.sampling.max_new_tokens > cfg.data.max_seq_len:
        raise ConfigError(
            f"max_prompt_len ({cfg.data.max_prompt_len}) + max_new_tokens "
            f"({cfg.sampling.max_new_tokens}) exceeds max_seq_len ({cfg.data.max_seq_len})"
        )


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """What the batch settings imply, computed in one place and echoed at start-up."""

    prompts_per_rollout: int
    responses_per_prompt: int
    rollout_batch: int  # responses per rollout buffer
    micro_batch: int  # responses per forward/backward
    accumulation: int  # micro-batches per optimiser step
    minibatch: int  # responses per optimiser step
    ppo_epochs: int
    steps_per_rollout: int  # optimiser steps (each of actor and critic) per rollout
    num_rollouts: int
    total_steps: int  # optimiser steps over the run
    n_prompts: int

    def describe(self) -> str:
        return (
            f"each rollout: {self.prompts_per_rollout} prompts x {self.responses_per_prompt} "
            f"responses = {self.rollout_batch} responses; {self.ppo_epochs} PPO epochs x "
            f"{self.rollout_batch // self.minibatch} minibatches of {self.minibatch} "
            f"(= {self.micro_batch} per micro-batch x {self.accumulation} accumulated) = "
            f"{self.steps_per_rollout} optimiser steps per rollout; {self.num_rollouts} rollouts "
            f"= {self.total_steps} optimiser steps; {self.num_rollouts * self.prompts_per_rollout}"
            f" prompts used of {self.n_prompts} "
            f"({self.num_rollouts * self.prompts_per_rollout / max(self.n_prompts, 1):.2f} epochs)"
        )


def batch_plan(cfg: PPOConfig, n_prompts: int) -> BatchPlan:
    """Rollout count precedence: ``num_rollouts`` > ``max_steps`` > ``num_train_epochs``."""
    b, o = cfg.batch, cfg.optim
    rollout = b.prompts_per_rollout * b.responses_per_prompt
    mini = o.per_device_train_batch_size * o.gradient_accumulation_steps
    per_rollout = b.ppo_epochs * rollout // mini
    if b.num_rollouts is not None:
        n = b.num_rollouts
    elif o.max_steps is not None:
        n = math.ceil(o.max_steps / per_rollout)
    else:
        n = math.ceil(o.num_train_epochs * n_prompts / b.prompts_per_rollout)
    return BatchPlan(
        b.prompts_per_rollout,
        b.responses_per_prompt,
        rollout,
        o.per_device_train_batch_size,
        o.gradient_accumulation_steps,
        mini,
        b.ppo_epochs,
        per_rollout,
        n,
        n * per_rollout,
        n_prompts,
    )


# --- one PPO update ---------------------------------------------------------------------------


@dataclasses.dataclass
class Learner:
    """A trainable model with its optimiser and schedule."""

    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    max_grad_norm: float


def _clip_and_step(learner: Learner) -> float:
    norm = common.grad_norm(learner.model, learner.max_grad_norm)
    learner.optimizer.step()
    learner.scheduler.step()
    learner.optimizer.zero_grad(set_to_none=True)
    return norm


def _add(acc: dict[str, float], metrics: dict[str, Any], weight: float) -> None:
    for k, v in metrics.items():
        acc[k] = acc.get(k, 0.0) + weight * float(v)


def ptx_loss(actor: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """PPO-ptx: token-mean SFT negative log-likelihood of a step-1 batch (response tokens)."""
    logits = forward(actor, batch["input_ids"], batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]  # [B, T-1]: logits[:, t] predicts token t + 1
    logprobs = token_logprobs(logits[:, :-1], labels)
    loss, _ = sft_loss(logprobs, labels != IGNORE_INDEX)
    return loss


def actor_minibatch_step(
    actor: Learner,
    mb: xp.Experience,
    micro_size: int,
    args: PPOLossArgs,
    *,
    temperature: float,
    kl_coef: float,
    ptx_batches: Sequence[dict[str, torch.Tensor]] = (),
) -> dict[str, float]:
    """One actor optimiser step over the minibatch ``mb``, accumulated over micro-batches.

    ``loss = aggregate(policy loss) - entropy_coef * aggregate(entropy)
    [+ kl_coef * aggregate(KL(pi || ref)) if kl_in_loss] [+ ptx_coef * SFT loss]``; each
    micro-batch's loss is weighted by :func:`~simple_rlhf.rollout.experience.micro_batch_weight`
    so the step equals one over the whole minibatch.
    """
    agg, acc = args.loss_aggregation, {}
    clip_high = args.clip_range if args.clip_range_high is None else args.clip_range_high
    n_micro = math.ceil(len(mb) / micro_size)
    for i, s in enumerate(range(0, len(mb), micro_size)):
        micro = mb.index(range(s, min(s + micro_size, len(mb))))
        w = xp.micro_batch_weight(agg, micro.mask, mb.mask)
        logprobs, entropy = xp.policy_logprobs(
            actor.model, micro.rollout, temperature=temperature, with_entropy=args.entropy_coef > 0
        )
        loss, m = policy_loss(
            logprobs,
            micro.old_logprobs,
            micro.advantages,
            micro.mask,
            clip_low=args.clip_range,
            clip_high=clip_high,
            dual_clip=args.dual_clip,
            aggregation=agg,
        )
        if entropy is not None:
            ent = aggregate(entropy, micro.mask, agg)
            loss = loss - args.entropy_coef * ent
            m["policy/entropy_loss"] = ent.detach()
        if args.kl_in_loss:
            kl = kl_penalty(logprobs, micro.ref_logprobs, args.kl_estimator)
            kl_term = aggregate(kl, micro.mask, agg)
            loss = loss + kl_coef * kl_term
            m["policy/kl_loss"] = kl_term.detach()
        (loss * w).backward()
        if args.ptx_coef > 0 and i < len(ptx_batches):
            ptx = ptx_loss(actor.model, ptx_batches[i])
            (args.ptx_coef * ptx / n_micro).backward()
            m["policy/ptx_loss"] = ptx.detach()
        m.pop("policy/ratio_max", None)
        _add(acc, m, w)
    acc["policy/grad_norm"] = _clip_and_step(actor)
    return acc


def critic_minibatch_step(
    critic: Learner, mb: xp.Experience, micro_size: int, args: PPOLossArgs
) -> dict[str, float]:
    """One critic optimiser step: ``vf_coef * clipped value loss`` towards the GAE returns."""
    agg, acc = args.loss_aggregation, {}
    for s in range(0, len(mb), micro_size):
        micro = mb.index(range(s, min(s + micro_size, len(mb))))
        w = xp.micro_batch_weight(agg, micro.mask, mb.mask)
        values = xp.response_values(critic.model, micro.rollout)  # [b, R]
        loss, m = value_loss(
            values,
            micro.values,
            micro.returns,
            micro.mask,
            clip_range=args.value_clip,
            aggregation=agg,
        )
        (args.vf_coef * loss * w).backward()
        _add(acc, m, w)
    acc["critic/grad_norm"] = _clip_and_step(critic)
    return acc


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
    ema: Any = None,
) -> dict[str, float]:
    """``ppo_epochs`` passes over the buffer, reshuffled each pass (``seed + epoch``), one actor and
    one critic optimiser step per minibatch. ``actor=None`` trains the critic only (warm-up)."""
    totals: dict[str, float] = {}
    n_steps = 0
    for model in (actor, critic):
        if model is not None:
            model.model.train()
    for epoch in range(plan.ppo_epochs):
        for idx in xp.minibatches(len(exp), plan.minibatch, seed + epoch):
            mb = exp.index(idx)
            if actor is not None:
                ptx = [next(ptx_iter) for _ in range(plan.accumulation)] if ptx_iter else []
                m = actor_minibatch_step(
                    actor,
                    mb,
                    plan.micro_batch,
                    args,
                    temperature=temperature,
                    kl_coef=kl_coef,
                    ptx_batches=ptx,
                )
                _add(totals, m, 1.0)
                if ema is not None:
                    ema.update(actor.model)
            if critic is not None:
                _add(totals, critic_minibatch_step(critic, mb, plan.micro_batch, args), 1.0)
            n_steps += 1
    return {k: v / max(n_steps, 1) for k, v in totals.items()}


class EMA:
    """Exponential moving average of a model's trainable weights: ``e <- d * e + (1 - d) * w``."""

    def __init__(self, model: Any, decay: float) -> None:
        self.decay = decay
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


# --- setup helpers --------------------------------------------------------------------------------


def _freeze(model: Any) -> Any:
    disable_dropout(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_models(cfg: PPOConfig, tokenizer: Any) -> tuple[Any, Any | None, Any]:
    """``(actor, reference or None, critic)``; dropout 0 everywhere; reference frozen.

    The reference is ``None`` when the actor trains LoRA adapters only: then it is the actor with
    the adapter disabled (see :func:`~simple_rlhf.rollout.experience.reference`).
    """
    m = cfg.model
    actor = load_causal_lm(
        m.actor_model_name_or_path,
        tokenizer,
        dtype=m.dtype,
        dropout=0.0,
        trust_remote_code=m.trust_remote_code,
        gradient_checkpointing=m.gradient_checkpointing,
    )
    disable_dropout(actor)
    lora_ref = cfg.lora.lora_dim > 0 and cfg.lora.only_optimize_lora
    ref = None if lora_ref else _freeze(copy.deepcopy(actor))
    actor = apply_lora(actor, cfg.lora)
    critic_path = m.critic_model_name_or_path or m.reward_model or m.actor_model_name_or_path
    critic = load_reward_model(
        critic_path,
        tokenizer,
        dtype=m.dtype,
        dropout=0.0,
        trust_remote_code=m.trust_remote_code,
        gradient_checkpointing=m.gradient_checkpointing,
    )
    disable_dropout(critic)
    return actor, ref, critic


def prompt_stream(
    prompts: Sequence[dict[str, Any]], per_rollout: int, seed: int, start: int = 0
) -> Iterator[list[dict[str, Any]]]:
    """Batches of prompts, reshuffled every pass over the data; skips ``start`` batches."""
    k, epoch = 0, 0
    while True:
        for chunk in common.batches(
            prompts,
            per_rollout,
            shuffle=True,
            seed=seed + epoch,
            drop_last=len(prompts) >= per_rollout,
        ):
            if k >= start:
                yield chunk
            k += 1
        epoch += 1


def cycle_ptx(examples: Sequence[dict], batch_size: int, pad_id: int, seed: int) -> Iterator:
    epoch = 0
    while True:
        for chunk in common.batches(examples, batch_size, shuffle=True, seed=seed + epoch):
            yield collate_sft(chunk, pad_id)
        epoch += 1


def gold_and_reward_eval(
    model: Any, tokenizer: Any, reward: Any, n_prompts: int, sampling: SamplingArgs
) -> dict[str, float]:
    """Held-out tiny-task prompts, greedy and sampled answers: gold reward, the run's reward, EOS
    rate and length (the keys of ``rollout/evaluate.py::evaluate_gold``, plus ``reward_*``; one
    generation serves both scores)."""
    from simple_rlhf.data.tiny_task import eval_prompts, gold_reward_batch
    from simple_rlhf.rollout.evaluate import GREEDY, answer, score_answers

    out: dict[str, float] = {}
    prompts = eval_prompts(n_prompts)
    greedy = dataclasses.replace(GREEDY, max_new_tokens=sampling.max_new_tokens)
    for kind, s in (("greedy", greedy), ("sampled", sampling)):
        texts, rollout = answer(model, tokenizer, prompts, s, seed=0)
        gold = score_answers(prompts, texts, gold_reward_batch)
        scores = reward(prompts, texts)
        out[f"eval/gold_{kind}"] = sum(gold) / len(gold)
        out[f"eval/reward_{kind}"] = sum(scores) / len(scores)
        out[f"eval/eos_rate_{kind}"] = float(rollout.has_eos.float().mean())
        out[f"eval/response_len_{kind}"] = float(rollout.response_lengths.float().mean())
    return out


def _show_samples(
    logger: MetricsLogger,
    prompts: Sequence[Any],
    texts: Sequence[str],
    scores: torch.Tensor,
    n: int = 2,
) -> None:
    from simple_rlhf.data.tiny_task import prompt_text

    for i in range(min(n, len(texts))):
        logger.print(
            f"  [sample] {prompt_text(prompts[i])!r} -> {texts[i]!r} (score {float(scores[i]):.3f})"
        )


def _warnings(cfg: PPOConfig, metrics: dict[str, float]) -> list[str]:
    mon, out = cfg.monitor, []
    if metrics.get("objective/kl", 0.0) > mon.kl_warn:
        out.append(
            f"KL per response {metrics['objective/kl']:.2f} > {mon.kl_warn}: "
            "raise --kl-coef or lower the learning rate"
        )
    if "policy/entropy" in metrics and metrics["policy/entropy"] < mon.entropy_warn:
        out.append(
            f"entropy {metrics['policy/entropy']:.3f} < {mon.entropy_warn}: the policy "
            "is collapsing"
        )
    if metrics.get("rollout/eos_rate", 1.0) < mon.eos_rate_warn:
        out.append(
            f"EOS rate {metrics['rollout/eos_rate']:.2f} < {mon.eos_rate_warn}: responses "
            "run to max_new_tokens (consider --missing-eos-penalty)"
        )
    return out


# --- the run ------------------------------------------------------------------------------------


def run(cfg: PPOConfig) -> dict[str, Any]:
    """Roll out, score, update; evaluate before/after (and every eval_steps rollouts); save."""
    # ---- setup ----
    set_seed(cfg.optim.seed)
    m, o, p, out_dir = cfg.model, cfg.optim, cfg.ppo, cfg.log.output_dir
    tokenizer = load_tokenizer(
        m.tokenizer_name_or_path or m.actor_model_name_or_path,
        trust_remote_code=m.trust_remote_code,
    )
    actor, ref, critic = load_models(cfg, tokenizer)
    reward = build_reward(
        m.reward_model,
        cfg.reward.reward_funcs,
        cfg.reward.reward_weights,
        normalize=cfg.reward.normalize_reward,
        clip=None,  # clipping is applied once, after the EOS penalty (score_responses)
        batch_size=cfg.batch.forward_batch_size,
        dtype=m.dtype,
        trust_remote_code=m.trust_remote_code,
    )
    prompts, pstats = load_encoded(tokenizer, cfg.data, "prompt", step=3, split="train")
    if not prompts:
        raise ValueError("no prompts left after length filtering: raise --max-prompt-len")
    plan = batch_plan(cfg, len(prompts))
    critic_o = dataclasses.replace(
        o,
        learning_rate=p.critic_learning_rate,
        lr_scheduler_type=p.critic_lr_scheduler_type or o.lr_scheduler_type,
    )
    actor_steps = max(plan.num_rollouts - p.critic_warmup_rollouts, 0) * plan.steps_per_rollout
    a_opt = common.build_optimizer(actor, o, cfg.lora)
    c_opt = common.build_optimizer(critic, critic_o)
    a = Learner(actor, a_opt, common.build_scheduler(a_opt, o, actor_steps), o.max_grad_norm)
    c = Learner(
        critic, c_opt, common.build_scheduler(c_opt, critic_o, plan.total_steps), o.max_grad_norm
    )
    kl_ctl = (
        AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon)
        if p.adaptive_kl
        else FixedKLController(p.kl_coef)
    )
    ema = EMA(actor, p.ema_decay) if p.ema_decay else None
    ptx_iter = None
    if p.ptx_coef > 0:
        ptx_data, _ = load_encoded(tokenizer, cfg.data, "sft", step=1, split="train")
        ptx_iter = cycle_ptx(ptx_data, plan.micro_batch, tokenizer.pad_token_id, o.seed)
    logger = MetricsLogger(
        out_dir, cfg.log.report_to, total_steps=plan.num_rollouts, progress_bar=cfg.log.progress_bar
    )
    common.save_run_config(out_dir, cfg)
    n_all, n_train = count_parameters(actor)
    logger.print(
        f"[ppo] actor {n_all / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trainable), reference: "
        f"{'actor with LoRA disabled' if ref is None else 'frozen copy'}, critic from "
        f"{m.critic_model_name_or_path or m.reward_model or m.actor_model_name_or_path}, reward: "
        f"{' + '.join(f'{w:g}*{n}' for n, w in zip(reward.names, reward.weights, strict=True))}"
        f"; prompts: {pstats.describe()}"
    )
    if "rm" in reward.names and not reward.sources[reward.names.index("rm")].normalized:
        logger.print("[ppo] warning: the reward model has no reward_stats.json: raw scores used")
    logger.print(f"[ppo] batch plan: {plan.describe()}")

    step = 0
    models = {"actor": actor, "critic": critic} | ({"actor_ema": ema.model} if ema else {})
    opts, scheds = {"actor": a_opt, "critic": c_opt}, {"actor": a.scheduler, "critic": c.scheduler}
    ckpt = latest_checkpoint(out_dir) if cfg.log.resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, models=models, optimizers=opts, schedulers=scheds)
        step = state["step"]
        kl_ctl.load_state_dict(state["kl_controller"])
        logger.print(f"[ppo] resumed from {ckpt} at rollout {step}")

    temperature = xp.logprob_temperature(cfg.sampling)
    tiny = "tiny" in cfg.data.data_path and cfg.monitor.gold_eval_prompts > 0
    summary: dict[str, Any] = {"batch_plan": dataclasses.asdict(plan)}

    def evaluate(tag: str) -> dict[str, float]:
        if not tiny:
            return {}
        metrics = gold_and_reward_eval(
            actor, tokenizer, reward, cfg.monitor.gold_eval_prompts, cfg.sampling
        )
        logger.log(metrics, step)
        logger.print(f"[ppo] eval ({tag}, rollout {step}): {format_metrics(metrics)}")
        return metrics

    if step == 0:
        summary["before"] = evaluate("before training")

    # ---- train loop ----
    timer = common.Timer()
    stream = prompt_stream(prompts, cfg.batch.prompts_per_rollout, o.seed, start=step)
    last_eval, metrics = -1, {}
    while step < plan.num_rollouts:
        batch = next(stream)
        k = cfg.batch.responses_per_prompt
        rows = [ex for ex in batch for _ in range(k)]  # the k samples of a prompt are contiguous
        with timer("generate"):
            rollout = generate(
                actor,
                tokenizer,
                [r["prompt_ids"] for r in rows],
                cfg.sampling,
                seed=o.seed * 100003 + step,
            )
            texts = decode_responses(tokenizer, rollout)
        with timer("score"):
            scores, r_metrics = xp.score_responses(
                reward,
                [r["prompt"] for r in rows],
                texts,
                rollout.has_eos,
                fields=fields_to_columns([r["fields"] for r in rows]),
                missing_eos_penalty=cfg.reward.missing_eos_penalty,
                clip=cfg.reward.reward_clip,
            )
        with timer("experience"):
            fb = cfg.batch.forward_batch_size
            old_lp, entropy = xp.compute_logprobs(
                actor, rollout, temperature=temperature, batch_size=fb, with_entropy=True
            )
            with xp.reference(actor, ref) as ref_model:
                ref_lp, _ = xp.compute_logprobs(
                    ref_model, rollout, temperature=temperature, batch_size=fb
                )
            values = xp.compute_values(critic, rollout, batch_size=fb)
            exp, e_metrics = xp.make_experience(
                rollout,
                old_lp,
                ref_lp,
                scores,
                values=values,
                kl_coef=kl_ctl.value,
                kl_estimator=p.kl_estimator,
                kl_in_reward=not p.kl_in_loss,
                gamma=p.gamma,
                lam=p.lam,
                whiten_rewards=cfg.reward.whiten_rewards,
                whiten_advantages=p.whiten_advantages,
            )
            e_metrics["policy/entropy"] = float(masked_mean(entropy, rollout.response_mask))
        with timer("train"):
            t_metrics = ppo_update(
                exp,
                a if step >= p.critic_warmup_rollouts else None,
                c,
                plan,
                p,
                temperature=temperature,
                kl_coef=kl_ctl.value,
                seed=o.seed * 7919 + step,
                ptx_iter=ptx_iter,
                ema=ema,
            )
        kl_ctl.update(e_metrics["objective/kl"], len(exp))
        step += 1
        metrics = {
            **r_metrics,
            **e_metrics,
            **t_metrics,
            **timer.pop(),
            "train/actor_lr": a.scheduler.get_last_lr()[0],
            "train/critic_lr": c.scheduler.get_last_lr()[0],
        }
        logger.progress(1, {"score": metrics["reward/score_mean"], "kl": metrics["objective/kl"]})
        if step % cfg.log.logging_steps == 0 or step == plan.num_rollouts:
            logger.log(metrics, step)
        if cfg.monitor.sample_every and (step % cfg.monitor.sample_every == 0 or step == 1):
            logger.print(f"[ppo] rollout {step}: " + format_metrics(metrics, SHOWN))
            _show_samples(logger, [r["prompt"] for r in rows], texts, scores)
        for w in _warnings(cfg, metrics):
            logger.print(f"[ppo] warning (rollout {step}): {w}")
        if cfg.log.eval_steps and step % cfg.log.eval_steps == 0:
            summary[f"rollout_{step}"] = evaluate(f"rollout {step}")
            last_eval = step
        if cfg.log.save_steps and step % cfg.log.save_steps == 0:
            save_checkpoint(
                out_dir,
                step,
                models=models,
                optimizers=opts,
                schedulers=scheds,
                state={"kl_controller": kl_ctl.state_dict()},
            )

    # ---- evaluate + save ----
    summary["after"] = evaluate("final") if last_eval != step else summary[f"rollout_{step}"]
    summary["last_rollout"] = {k: metrics[k] for k in SHOWN if k in metrics}
    summary["rollouts"] = step
    if ema is not None:
        save_hf_model(ema.model, tokenizer, f"{out_dir}/actor_ema", merge_lora=cfg.lora.merge_lora)
    save_hf_model(critic, tokenizer, f"{out_dir}/critic")
    save_hf_model(
        actor,
        tokenizer,
        out_dir,
        merge_lora=cfg.lora.merge_lora,
        extra_json={"summary.json": summary},
    )
    logger.print(f"[ppo] saved actor to {out_dir}, critic to {out_dir}/critic")
    logger.close()
    return summary


SHOWN = (
    "reward/score_mean",
    "objective/kl",
    "policy/entropy",
    "policy/clipfrac",
    "critic/explained_variance",
    "rollout/response_len",
    "rollout/eos_rate",
)
