"""Step 3 without a critic: GRPO, RLOO and REINFORCE++ (one loop, three configs).

Variant: each rollout samples ``K = num_generations`` responses for each of ``prompts_per_rollout``
prompts (the K samples of a prompt are contiguous rows) with the shared generation engine
(``rollout/generate.py``), scores them with the shared reward source (``rollout/rewards.py``: an RM
and/or Python functions, weighted; per-source means are logged), and turns them into experience
with ``rollout/experience.py::make_experience`` using a critic-free advantage estimator chosen by
name from ``losses/advantages.py::ADVANTAGE_ESTIMATORS``:

* ``grpo``: ``A_i = (r_i - mean_g r) / (std_g r + eps)`` (Shao et al. 2024);
* ``dr_grpo``: ``A_i = r_i - mean_g r`` (Liu et al. 2025; pair with ``seq_mean_token_sum_norm``);
* ``rloo``: ``A_i = r_i - mean_{j != i} r_j`` (Ahmadian et al. 2024);
* ``reinforce_pp``: reward-to-go of ``score - beta * KL_t``, whitened over the batch (Hu et al.);
* ``reinforce_pp_baseline``: group-centred scores, then the same batch whitening.

The KL to the frozen reference (``kl_mode``) is in the loss (``beta * aggregate(k3)``, GRPO), in the
reward (``-beta * KL_t`` per token, RLOO/REINFORCE++; estimator ``kl_estimator``) or off (then no
reference forward at all). Dynamic sampling (DAPO, Yu et al. 2025) drops the groups whose rewards
are all equal (their group-relative advantage is 0) and reports how many; ``mask_truncated`` removes
responses that hit ``max_new_tokens`` without EOS from the loss (DAPO "overlong filtering"). Then
``num_iterations`` (mu) passes over the kept rows, reshuffled, minibatches of
``per_device_train_batch_size x gradient_accumulation_steps``; per token
``l_t = max(-A_t rho_t, -A_t clip(rho_t, 1 - eps_low, 1 + eps_high))`` with
``rho_t = exp(logp_t - logp_old_t)`` (``losses/ppo.py::policy_loss``), reduced by name
(``losses/reduce.py``: ``seq_mean_token_mean`` GRPO, ``token_mean`` DAPO,
``seq_mean_token_sum_norm`` Dr. GRPO with the constant ``max_new_tokens``).

Why the loss is often ~0: with mu = 1 and one minibatch, ``rho = 1`` so the loss is ``-mean(A)``,
and group-normalised advantages average to ~0 in every group; the gradient ``-mean(A grad logp)``
is not 0. A run prints this once, with the gradient norm and the fraction of zero-advantage groups.

Deviations: one process (no distributed training yet); dropped groups are not re-sampled (the
buffer shrinks instead); a "step" of logging/eval/save is one rollout. Dropout is off.

One CPU, tiny default (SFT model from step 1; about 2-4 minutes)::

    simple-rlhf grpo --config configs/tiny/grpo.yaml
    simple-rlhf rloo --config configs/tiny/rloo.yaml
    simple-rlhf reinforce --config configs/tiny/reinforce.yaml   # --advantage-estimator reinforce_pp

With the step-2 RM as the reward::

    simple-rlhf grpo --config configs/tiny/grpo.yaml --reward-model outputs/reward --reward-funcs none

Several GPUs: not yet supported by this trainer (runs in one process).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import torch

from simple_rlhf.config import ConfigError, DataArgs, LogArgs, LoraArgs, OptimArgs, fld, section
from simple_rlhf.data.pipeline import load_encoded
from simple_rlhf.infra.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_hf_model,
)
from simple_rlhf.infra.logging import MetricsLogger, format_metrics
from simple_rlhf.infra.seed import set_seed
from simple_rlhf.losses.advantages import ADVANTAGE_ESTIMATORS, group_all_equal
from simple_rlhf.losses.kl import KL_ESTIMATORS, kl_penalty
from simple_rlhf.losses.ppo import policy_loss
from simple_rlhf.losses.reduce import AGGREGATIONS, aggregate, masked_mean
from simple_rlhf.models.loading import (
    count_parameters,
    disable_dropout,
    load_causal_lm,
    load_tokenizer,
)
from simple_rlhf.models.lora import apply_lora
from simple_rlhf.rollout import experience as xp
from simple_rlhf.rollout.generate import SamplingArgs, decode_responses, generate
from simple_rlhf.rollout.rewards import build_reward, fields_to_columns
from simple_rlhf.trainers import common
from simple_rlhf.trainers.ppo import (
    PPOMonitorArgs,
    _freeze,
    _show_samples,
    _warnings,
    gold_and_reward_eval,
    prompt_stream,
)

KL_MODES = ("loss", "reward", "none")

# --- configuration ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PolicyModelArgs:
    """The policy (also the reference) and how to load it."""

    model_name_or_path: str = fld("tiny", "the policy to train (normally the step-1 SFT model)")
    tokenizer_name_or_path: str | None = fld(None, "tokenizer (default: the policy's)")
    trust_remote_code: bool = fld(False, "allow custom modelling code shipped with a Hub model")
    dtype: str = fld("float32", "weights and compute dtype: float32, bfloat16 or float16")
    gradient_checkpointing: bool = fld(False, "recompute activations in backward")


@dataclasses.dataclass(frozen=True)
class RewardSourceArgs:
    """Where the scores come from (RM first, then functions; weights in that order)."""

    reward_model: str | None = fld(None, "reward model folder from step 2 (simple-rlhf reward)")
    reward_funcs: list[str] = fld(
        [],
        "reward functions: built-in names (tiny_gold, format, length_penalty, math_exact_match), "
        "module:function or file.py:function; 'none' = no function",
    )
    reward_weights: list[float] = fld([], "weights of the reward sources (default: all 1)")
    normalize_reward: bool = fld(True, "normalise RM scores with the mean/std stored with the RM")
    reward_clip: float | None = fld(5.0, "clip scores to [-c, c] (None: no clipping)")
    missing_eos_penalty: float | None = fld(None, "score of responses with no EOS (None: keep)")


@dataclasses.dataclass(frozen=True)
class GroupBatchArgs:
    """Rollout size and updates per rollout."""

    prompts_per_rollout: int = fld(8, "prompts sampled per rollout")
    num_generations: int = fld(8, "K: responses sampled per prompt (a group)")
    num_iterations: int = fld(1, "mu: passes over each rollout buffer (importance ratios vs old)")
    num_rollouts: int | None = fld(
        30, "rollouts to run (None: max_steps rollouts, else num_train_epochs over the prompts)"
    )
    forward_batch_size: int = fld(32, "rows per no-grad forward (old/reference logprobs)")


@dataclasses.dataclass(frozen=True)
class CriticFreeArgs:
    """Advantages, KL and the clipped policy loss."""

    advantage_estimator: str = fld("grpo", "one of " + ", ".join(ADVANTAGE_ESTIMATORS))
    loss_aggregation: str = fld("seq_mean_token_mean", "one of " + ", ".join(AGGREGATIONS))
    clip_range: float = fld(0.2, "epsilon_low of the ratio clip")
    clip_range_high: float | None = fld(None, "epsilon_high (clip-higher; None: clip_range)")
    kl_mode: str = fld("loss", "KL to the reference: loss (k3 in the loss), reward, or none")
    kl_coef: float = fld(0.04, "KL coefficient beta")
    kl_estimator: str = fld("k3", "KL estimator (k1, k2, k3, abs); the loss mode always uses k3")
    gamma: float = fld(1.0, "discount of the reward-to-go (REINFORCE++ estimators)")
    whiten_advantages: bool = fld(False, "also whiten the advantages over the batch")
    dynamic_sampling: bool = fld(False, "drop groups whose rewards are all equal (DAPO)")
    mask_truncated: bool = fld(False, "leave responses without EOS out of the loss")


def _stage_config(name: str, estimator: str, kl_mode: str, aggregation: str, kl_est: str) -> Any:
    """A stage config class (GRPO/RLOO/REINFORCE++) differing only in defaults."""

    @dataclasses.dataclass(frozen=True)
    class Config:
        model: PolicyModelArgs = section(PolicyModelArgs)
        reward: RewardSourceArgs = section(RewardSourceArgs)
        data: DataArgs = section(DataArgs)
        sampling: SamplingArgs = section(lambda: SamplingArgs(max_new_tokens=48, temperature=1.0))
        batch: GroupBatchArgs = section(GroupBatchArgs)
        rl: CriticFreeArgs = section(
            lambda: CriticFreeArgs(
                advantage_estimator=estimator,
                kl_mode=kl_mode,
                loss_aggregation=aggregation,
                kl_estimator=kl_est,
            )
        )
        optim: OptimArgs = section(
            lambda: OptimArgs(
                learning_rate=2e-4,
                lr_scheduler_type="constant",
                warmup_ratio=0.0,
                per_device_train_batch_size=32,
                gradient_accumulation_steps=1,
            )
        )
        lora: LoraArgs = section(LoraArgs)
        log: LogArgs = section(lambda: LogArgs(output_dir=f"outputs/{name}", logging_steps=1))
        monitor: PPOMonitorArgs = section(PPOMonitorArgs)

        def __post_init__(self) -> None:
            validate(self)

    Config.__name__ = Config.__qualname__ = f"{name.upper()}Config"
    Config.__doc__ = f"{name} (step 3, critic-free; see simple_rlhf.trainers.grpo)."
    return Config


GRPOConfig = _stage_config("grpo", "grpo", "loss", "seq_mean_token_mean", "k3")
RLOOConfig = _stage_config("rloo", "rloo", "reward", "token_mean", "k1")
ReinforceConfig = _stage_config("reinforce", "reinforce_pp", "reward", "token_mean", "k1")
ReinforceConfig.__name__ = ReinforceConfig.__qualname__ = "ReinforceConfig"
RLOOConfig.__name__ = RLOOConfig.__qualname__ = "RLOOConfig"


def reward_funcs(cfg: Any) -> list[str]:
    """The configured reward functions, without the placeholder ``none``."""
    return [f for f in cfg.reward.reward_funcs if f.lower() != "none"]


def validate(cfg: Any) -> None:
    """Cross-section checks with messages that say what to change."""
    b, r, o = cfg.batch, cfg.rl, cfg.optim
    if not cfg.reward.reward_model and not reward_funcs(cfg):
        raise ConfigError("no reward: set --reward-model (an RM folder) and/or --reward-funcs")
    n_sources = bool(cfg.reward.reward_model) + len(reward_funcs(cfg))
    if cfg.reward.reward_weights and len(cfg.reward.reward_weights) != n_sources:
        raise ConfigError(
            f"reward_weights: {len(cfg.reward.reward_weights)} weights for {n_sources} reward "
            "sources (the RM first, then each function)"
        )
    for name in ("prompts_per_rollout", "num_generations", "num_iterations", "forward_batch_size"):
        if getattr(b, name) < 1:
            raise ConfigError(f"{name}: must be >= 1")
    if r.advantage_estimator not in ADVANTAGE_ESTIMATORS:
        raise ConfigError(
            f"advantage_estimator: {r.advantage_estimator!r} is not one of "
            + ", ".join(ADVANTAGE_ESTIMATORS)
        )
    group_based = r.advantage_estimator in ("grpo", "rloo")
    if (group_based or r.dynamic_sampling) and b.num_generations < 2:
        raise ConfigError(
            f"num_generations: {r.advantage_estimator} advantages and dynamic sampling need "
            "K >= 2 responses per prompt"
        )
    if r.loss_aggregation not in AGGREGATIONS:
        raise ConfigError(
            f"loss_aggregation: {r.loss_aggregation!r} is not one of {', '.join(AGGREGATIONS)}"
        )
    if r.kl_mode not in KL_MODES:
        raise ConfigError(f"kl_mode: {r.kl_mode!r} is not one of {', '.join(KL_MODES)}")
    if r.kl_estimator not in KL_ESTIMATORS:
        raise ConfigError(
            f"kl_estimator: {r.kl_estimator!r} is not one of {', '.join(KL_ESTIMATORS)}"
        )
    if r.kl_coef < 0:
        raise ConfigError("kl_coef: must be >= 0")
    if r.clip_range <= 0 or (r.clip_range_high is not None and r.clip_range_high <= 0):
        raise ConfigError("clip_range / clip_range_high: must be > 0")
    rollout = b.prompts_per_rollout * b.num_generations
    mini = o.per_device_train_batch_size * o.gradient_accumulation_steps
    if rollout % mini:
        raise ConfigError(
            f"the rollout batch ({b.prompts_per_rollout} prompts x {b.num_generations} responses"
            f" = {rollout}) must be a multiple of the minibatch (per_device_train_batch_size "
            f"{o.per_device_train_batch_size} x gradient_accumulation_steps "
            f"{o.gradient_accumulation_steps} = {mini})"
        )
    if cfg.data.max_prompt_len + cfg.sampling.max_new_tokens > cfg.data.max_seq_len:
        raise ConfigError(
            f"max_prompt_len ({cfg.data.max_prompt_len}) + max_new_tokens "
            f"({cfg.sampling.max_new_tokens}) exceeds max_seq_len ({cfg.data.max_seq_len})"
        )


def num_rollouts(cfg: Any, n_prompts: int) -> int:
    """Precedence: ``num_rollouts`` > ``max_steps`` (= rollouts) > ``num_train_epochs``."""
    b, o = cfg.batch, cfg.optim
    if b.num_rollouts is not None:
        return b.num_rollouts
    if o.max_steps is not None:
        return o.max_steps
    return math.ceil(o.num_train_epochs * n_prompts / b.prompts_per_rollout)


# --- rollout -> kept rows -> update -------------------------------------------------------------


def filter_groups(scores: torch.Tensor, group_size: int) -> tuple[list[int], int]:
    """Dynamic sampling: row indices of the groups whose scores are not all equal, and the number
    of groups dropped. ``scores`` ``[B]`` with the K rows of a group contiguous."""
    equal = group_all_equal(scores, group_size)  # [n_groups]
    rows = [i for i in range(len(scores)) if not bool(equal[i // group_size])]
    return rows, int(equal.sum())


def loss_mask(exp: xp.Experience, mask_truncated: bool) -> torch.Tensor:
    """``[B, R]`` tokens that enter the loss: the response mask, minus truncated rows if asked."""
    mask = exp.mask
    if mask_truncated:
        mask = mask * exp.rollout.has_eos.to(mask.dtype)[:, None]
    return mask


def minibatch_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    mb: xp.Experience,
    micro_size: int,
    rl: CriticFreeArgs,
    *,
    temperature: float,
    agg_constant: float | None,
    max_grad_norm: float,
) -> dict[str, float]:
    """One optimiser step over ``mb`` accumulated over micro-batches of ``micro_size`` rows.

    ``loss = aggregate(clipped surrogate) [+ kl_coef * aggregate(k3(pi, ref))]`` over the loss mask;
    each micro-batch loss is weighted by ``xp.micro_batch_weight`` so the step equals one over the
    whole minibatch (for every aggregation).
    """
    agg, acc = rl.loss_aggregation, {}
    mb_mask = loss_mask(mb, rl.mask_truncated)
    clip_high = rl.clip_range if rl.clip_range_high is None else rl.clip_range_high
    for s in range(0, len(mb), micro_size):
        micro = mb.index(range(s, min(s + micro_size, len(mb))))
        mask = loss_mask(micro, rl.mask_truncated)
        w = xp.micro_batch_weight(agg, mask, mb_mask)
        logprobs, _ = xp.policy_logprobs(model, micro.rollout, temperature=temperature)
        loss, m = policy_loss(
            logprobs,
            micro.old_logprobs,
            micro.advantages,
            mask,
            clip_low=rl.clip_range,
            clip_high=clip_high,
            aggregation=agg,
            agg_constant=agg_constant,
        )
        if rl.kl_mode == "loss" and rl.kl_coef > 0:
            kl = aggregate(kl_penalty(logprobs, micro.ref_logprobs, "k3"), mask, agg, agg_constant)
            loss = loss + rl.kl_coef * kl
            m["policy/kl_loss"] = kl.detach()
        (loss * w).backward()
        m.pop("policy/ratio_max", None)
        for k, v in m.items():
            acc[k] = acc.get(k, 0.0) + w * float(v)
    acc["policy/grad_norm"] = common.grad_norm(model, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return acc


def update(
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    exp: xp.Experience,
    cfg: Any,
    *,
    temperature: float,
    seed: int,
) -> dict[str, float]:
    """``num_iterations`` passes over the kept rows, reshuffled (``seed + pass``); the last
    minibatch of a pass may be smaller (dynamic sampling shrinks the buffer)."""
    o = cfg.optim
    mini = o.per_device_train_batch_size * o.gradient_accumulation_steps
    constant = float(cfg.sampling.max_new_tokens)
    totals: dict[str, float] = {}
    n = 0
    model.train()
    for it in range(cfg.batch.num_iterations):
        for idx in xp.minibatches(len(exp), mini, seed + it):
            m = minibatch_step(
                model,
                optimizer,
                exp.index(idx),
                o.per_device_train_batch_size,
                cfg.rl,
                temperature=temperature,
                agg_constant=constant,
                max_grad_norm=o.max_grad_norm,
            )
            scheduler.step()
            for k, v in m.items():
                totals[k] = totals.get(k, 0.0) + v
            n += 1
    return {k: v / max(n, 1) for k, v in totals.items()} | {"train/optimizer_steps": float(n)}


def zero_loss_diagnostic(metrics: dict[str, float]) -> str:
    """One line explaining a policy loss of ~0 (it is expected, the gradient is not 0)."""
    return (
        f"policy/loss = {metrics.get('policy/loss', 0.0):.2e} is expected to be ~0: at the first "
        "pass rho = 1, so the loss is -mean(A), and group-relative advantages average to 0 per "
        f"group; the gradient is not 0 (grad norm {metrics.get('policy/grad_norm', 0.0):.3f}). "
        f"{metrics.get('rollout/zero_adv_group_frac', 0.0):.0%} of the groups had equal rewards "
        "(advantage 0: no signal); if that is 100%, raise temperature or num_generations, or "
        "use --dynamic-sampling"
    )


# --- the run ------------------------------------------------------------------------------------


def run(cfg: Any) -> dict[str, Any]:
    """Roll out K per prompt, score, advantages by name, mu clipped updates; evaluate; save."""
    set_seed(cfg.optim.seed)
    m, o, r, k = cfg.model, cfg.optim, cfg.rl, cfg.batch.num_generations
    tag, out_dir = type(cfg).__name__.removesuffix("Config").lower(), cfg.log.output_dir
    tokenizer = load_tokenizer(
        m.tokenizer_name_or_path or m.model_name_or_path, trust_remote_code=m.trust_remote_code
    )
    policy = load_causal_lm(
        m.model_name_or_path,
        tokenizer,
        dtype=m.dtype,
        dropout=0.0,
        trust_remote_code=m.trust_remote_code,
        gradient_checkpointing=m.gradient_checkpointing,
    )
    disable_dropout(policy)
    use_ref = r.kl_mode != "none" and r.kl_coef > 0
    lora_ref = cfg.lora.lora_dim > 0 and cfg.lora.only_optimize_lora
    ref = _freeze(copy.deepcopy(policy)) if use_ref and not lora_ref else None
    policy = apply_lora(policy, cfg.lora)
    rs = cfg.reward
    reward = build_reward(
        rs.reward_model,
        reward_funcs(cfg),
        rs.reward_weights,
        normalize=rs.normalize_reward,
        clip=None,
        batch_size=cfg.batch.forward_batch_size,
        dtype=m.dtype,
        trust_remote_code=m.trust_remote_code,
    )
    prompts, pstats = load_encoded(tokenizer, cfg.data, "prompt", step=3, split="train")
    if not prompts:
        raise ValueError("no prompts left after length filtering: raise --max-prompt-len")
    n_rollouts = num_rollouts(cfg, len(prompts))
    mini = o.per_device_train_batch_size * o.gradient_accumulation_steps
    per_rollout = cfg.batch.num_iterations * cfg.batch.prompts_per_rollout * k // mini
    optimizer = common.build_optimizer(policy, o, cfg.lora)
    scheduler = common.build_scheduler(optimizer, o, n_rollouts * per_rollout)
    logger = MetricsLogger(
        out_dir, cfg.log.report_to, total_steps=n_rollouts, progress_bar=cfg.log.progress_bar
    )
    common.save_run_config(out_dir, cfg)
    n_all, n_train = count_parameters(policy)
    logger.print(
        f"[{tag}] policy {n_all / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trainable); "
        f"advantages {r.advantage_estimator}, loss {r.loss_aggregation}, KL {r.kl_mode} "
        f"(beta {r.kl_coef:g}); reward "
        f"{' + '.join(f'{w:g}*{n}' for n, w in zip(reward.names, reward.weights, strict=True))}"
        f"; prompts: {pstats.describe()}"
    )
    logger.print(
        f"[{tag}] each rollout: {cfg.batch.prompts_per_rollout} prompts x {k} responses, "
        f"{cfg.batch.num_iterations} pass(es) in minibatches of {mini} = up to {per_rollout} "
        f"optimiser steps; {n_rollouts} rollouts"
    )
    step = 0
    ckpt = latest_checkpoint(out_dir) if cfg.log.resume else None
    if ckpt is not None:
        state = load_checkpoint(
            ckpt, models={"policy": policy}, optimizers={"policy": optimizer},
            schedulers={"policy": scheduler},
        )  # fmt: skip
        step = state["step"]
        logger.print(f"[{tag}] resumed from {ckpt} at rollout {step}")
    temperature = xp.logprob_temperature(cfg.sampling)
    tiny = "tiny" in cfg.data.data_path and cfg.monitor.gold_eval_prompts > 0
    summary: dict[str, Any] = {}

    def evaluate(when: str) -> dict[str, float]:
        if not tiny:
            return {}
        ev = gold_and_reward_eval(
            policy, tokenizer, reward, cfg.monitor.gold_eval_prompts, cfg.sampling
        )
        logger.log(ev, step)
        logger.print(f"[{tag}] eval ({when}, rollout {step}): {format_metrics(ev)}")
        return ev

    if step == 0:
        summary["before"] = evaluate("before training")
    timer = common.Timer()
    stream = prompt_stream(prompts, cfg.batch.prompts_per_rollout, o.seed, start=step)
    last_eval, metrics, explained = -1, {}, False
    while step < n_rollouts:
        rows = [ex for ex in next(stream) for _ in range(k)]  # the K samples are contiguous
        with timer("generate"):
            rollout = generate(
                policy,
                tokenizer,
                [x["prompt_ids"] for x in rows],
                cfg.sampling,
                seed=o.seed * 100003 + step,
            )
            texts = decode_responses(tokenizer, rollout)
        with timer("score"):
            scores, r_metrics = xp.score_responses(
                reward,
                [x["prompt"] for x in rows],
                texts,
                rollout.has_eos,
                fields=fields_to_columns([x["fields"] for x in rows]),
                missing_eos_penalty=rs.missing_eos_penalty,
                clip=rs.reward_clip,
            )
        with timer("experience"):
            fb = cfg.batch.forward_batch_size
            old_lp, entropy = xp.compute_logprobs(
                policy, rollout, temperature=temperature, batch_size=fb, with_entropy=True
            )
            ref_lp = old_lp
            if use_ref:
                with xp.reference(policy, ref) as ref_model:
                    ref_lp, _ = xp.compute_logprobs(
                        ref_model, rollout, temperature=temperature, batch_size=fb
                    )
            exp, e_metrics = xp.make_experience(
                rollout,
                old_lp,
                ref_lp,
                scores,
                kl_coef=r.kl_coef if use_ref else 0.0,
                kl_estimator=r.kl_estimator if r.kl_mode == "reward" else "k3",
                kl_in_reward=r.kl_mode == "reward",
                advantage_estimator=r.advantage_estimator,
                group_size=k,
                gamma=r.gamma,
                whiten_advantages=r.whiten_advantages,
            )
            e_metrics["policy/entropy"] = float(masked_mean(entropy, rollout.response_mask))
            n_groups = len(rows) // k
            keep, n_dropped = filter_groups(scores, k) if k > 1 else (list(range(len(rows))), 0)
            e_metrics["rollout/zero_adv_group_frac"] = n_dropped / n_groups if k > 1 else 0.0
            e_metrics["rollout/truncated_frac"] = float(1 - rollout.has_eos.float().mean())
            if r.dynamic_sampling:
                e_metrics["rollout/groups_dropped"] = float(n_dropped)
                exp = exp.index(keep)
        with timer("train"):
            t_metrics = {}
            if len(exp):
                t_metrics = update(
                    policy, optimizer, scheduler, exp, cfg,
                    temperature=temperature, seed=o.seed * 7919 + step,
                )  # fmt: skip
        step += 1
        metrics = {**r_metrics, **e_metrics, **t_metrics, **timer.pop()}
        metrics["train/lr"] = scheduler.get_last_lr()[0]
        logger.progress(1, {"score": metrics["reward/score_mean"]})
        if step % cfg.log.logging_steps == 0 or step == n_rollouts:
            logger.log(metrics, step)
        if not len(exp):
            logger.print(
                f"[{tag}] rollout {step}: every group had equal rewards, all dropped (no update)"
            )
        elif not explained and abs(metrics.get("policy/loss", 1.0)) < 1e-3:
            logger.print(f"[{tag}] note: {zero_loss_diagnostic(metrics)}")
            explained = True
        if cfg.monitor.sample_every and (step % cfg.monitor.sample_every == 0 or step == 1):
            logger.print(f"[{tag}] rollout {step}: " + format_metrics(metrics, SHOWN))
            _show_samples(logger, [x["prompt"] for x in rows], texts, scores)
        for w in _warnings(cfg, metrics):
            logger.print(f"[{tag}] warning (rollout {step}): {w}")
        if cfg.log.eval_steps and step % cfg.log.eval_steps == 0:
            summary[f"rollout_{step}"] = evaluate(f"rollout {step}")
            last_eval = step
        if cfg.log.save_steps and step % cfg.log.save_steps == 0:
            save_checkpoint(
                out_dir, step, models={"policy": policy}, optimizers={"policy": optimizer},
                schedulers={"policy": scheduler},
            )  # fmt: skip

    summary["after"] = evaluate("final") if last_eval != step else summary[f"rollout_{step}"]
    summary["last_rollout"] = {key: metrics[key] for key in SHOWN if key in metrics}
    summary["rollouts"] = step
    save_hf_model(
        policy, tokenizer, out_dir, merge_lora=cfg.lora.merge_lora,
        extra_json={"summary.json": summary},
    )  # fmt: skip
    logger.print(f"[{tag}] saved the policy to {out_dir}")
    logger.close()
    return summary


SHOWN = (
    "reward/score_mean",
    "objective/kl",
    "policy/entropy",
    "policy/clipfrac",
    "policy/grad_norm",
    "rollout/zero_adv_group_frac",
    "rollout/response_len",
    "rollout/eos_rate",
)
