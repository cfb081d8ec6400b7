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

Deviations: dropped groups are not re-sampled (the buffer shrinks instead); a "step" of
logging/eval/save is one rollout. Dropout is off.

Several processes (torchrun / deepspeed launcher; ``trainers/online_dist.py``), as PPO: one
policy engine (DDP, or ``--zero-stage 0-3`` with ``--offload``), the reference and the reward
model following its stage (``--offload-reference-model``: their parameters on CPU under ZeRO-3).
``prompts_per_rollout`` stays the global batch: rank ``r`` samples, scores and evaluates its
contiguous slice of whole prompt groups (``prompts_per_rollout`` must be a multiple of the
number of processes), the pieces are gathered on every rank, so group baselines, REINFORCE++'s
batch whitening, the KL, dynamic sampling and the metrics are those of the global batch. A
minibatch is ``per_device_train_batch_size x gradient_accumulation_steps x N`` rows drawn alike on
every rank; each rank runs its slice with the global micro-batch weights and the loss times ``N``,
so N ranks equal one process on the same rollout batch (tested with a per-row sampling seed, since
a sampled batch depends on its composition). Under ZeRO-3 the policy generates with
``synced_gpus`` and every rank evaluates the same held-out prompts; rank 0 saves (gathered under
ZeRO-3); ``--save-steps`` writes resumable engine checkpoints (``infra/dist_checkpoint.py``).

Code: what these trainers share with PPO (models, prompt stream, rollout + scoring, the clipped
policy loss, evaluation and reporting) is in ``trainers/online.py``, the multi-process pieces in
``trainers/online_dist.py``.

Measured (benchmarks/grpo_results.md, mean of 3 seeds, 8 rollouts of 8 prompts x 4 responses,
5-7 CPU-seconds each): held-out greedy gold 0.80 -> 0.95 (GRPO), 0.95 (RLOO), 0.95 (REINFORCE++),
0.95 (REINFORCE++-baseline) with the gold function as the reward, and 0.97 / 0.97 / 0.95 / 0.97
with the step-2 RM as the reward. One CPU, tiny default (SFT model from step 1; 30 rollouts of
8 x 8, about 2-4 minutes)::

    simple-rlhf grpo --config configs/tiny/grpo.yaml
    simple-rlhf rloo --config configs/tiny/rloo.yaml
    simple-rlhf reinforce --config configs/tiny/reinforce.yaml   # --advantage-estimator reinforce_pp

With the step-2 RM as the reward::

    simple-rlhf grpo --config configs/tiny/grpo.yaml --reward-model outputs/reward --reward-funcs

Several GPUs (or CPU processes over gloo)::

    torchrun --nproc_per_node 8 -m simple_rlhf grpo --config configs/tiny/grpo.yaml --zero-stage 2
    deepspeed --num_gpus 8 --module simple_rlhf grpo ... --zero-stage 3 --offload-reference-model
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import torch

from simple_rlhf.config import (
    ConfigError,
    DataArgs,
    HeldoutArgs,
    LogArgs,
    LoraArgs,
    OptimArgs,
    fld,
    section,
)
from simple_rlhf.infra.distributed import count_parameters, init_distributed
from simple_rlhf.infra.engine import guarded_step
from simple_rlhf.infra.guard import NonFiniteGuard
from simple_rlhf.infra.seed import set_seed
from simple_rlhf.losses.advantages import ADVANTAGE_ESTIMATORS, group_all_equal
from simple_rlhf.losses.kl import KL_ESTIMATORS
from simple_rlhf.losses.reduce import AGGREGATIONS
from simple_rlhf.rollout import experience as xp
from simple_rlhf.rollout.generate import SamplingArgs
from simple_rlhf.trainers import common
from simple_rlhf.trainers import online as ol
from simple_rlhf.trainers import online_dist as od
from simple_rlhf.trainers.online import (
    REWARD_FUNCS_HELP,
    Learner,
    OnlineMonitorArgs,
    PolicyLossSpec,
    loss_mask,
    policy_backward,
)

__all__ = [
    "KL_MODES",
    "CriticFreeArgs",
    "GRPODistArgs",
    "GRPOConfig",
    "GroupBatchArgs",
    "PolicyModelArgs",
    "RLOOConfig",
    "ReinforceConfig",
    "RewardSourceArgs",
    "filter_groups",
    "loss_mask",
    "minibatch_step",
    "num_rollouts",
    "reward_funcs",
    "run",
    "update",
    "validate",
    "zero_loss_diagnostic",
]

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
    reward_funcs: list[str] = fld([], REWARD_FUNCS_HELP)
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
        250,
        "rollouts to run (250: two passes over 1,000 prompts of 8 x 8), at most max_steps if that "
        "is set (None: max_steps rollouts, else num_train_epochs over the prompts)",
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


GRPODistArgs = od.PolicyDistArgs  # --zero-stage, --offload, --offload-reference-model, ...


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
                learning_rate=5e-5,
                lr_scheduler_type="constant",
                warmup_ratio=0.0,
                per_device_train_batch_size=32,
                gradient_accumulation_steps=1,
            )
        )
        lora: LoraArgs = section(LoraArgs)
        log: LogArgs = section(lambda: LogArgs(output_dir=f"outputs/{name}", logging_steps=1))
        monitor: OnlineMonitorArgs = section(OnlineMonitorArgs)
        heldout: HeldoutArgs = section(HeldoutArgs)
        dist: GRPODistArgs = section(GRPODistArgs)

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
    return ol.reward_function_names(cfg.reward.reward_funcs)


def validate(cfg: Any) -> None:
    """Cross-section checks with messages that say what to change."""
    b, r = cfg.batch, cfg.rl
    ol.check_reward_sources(cfg.reward.reward_model, cfg.reward)
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
    ol.check_rollout_shape(cfg, b.prompts_per_rollout, b.num_generations)


def num_rollouts(cfg: Any, n_prompts: int) -> int:
    """``num_rollouts``, capped by ``max_steps`` (counted in rollouts) when that is set; with
    ``num_rollouts`` None: ``max_steps``, else ``num_train_epochs`` over the prompts."""
    b, o = cfg.batch, cfg.optim
    if b.num_rollouts is not None:
        return min(b.num_rollouts, o.max_steps or b.num_rollouts)
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


def loss_spec(
    rl: CriticFreeArgs, agg_constant: float | None, old_from_current: bool = False
) -> PolicyLossSpec:
    """The policy loss of the critic-free trainers: the k3 KL in the loss only in ``loss`` mode;
    ``old_from_current``: the rollout carries no old logprobs (``ol.old_logprobs_needed``)."""
    return PolicyLossSpec(
        aggregation=rl.loss_aggregation,
        clip_low=rl.clip_range,
        clip_high=rl.clip_range if rl.clip_range_high is None else rl.clip_range_high,
        agg_constant=agg_constant,
        kl_coef=rl.kl_coef if rl.kl_mode == "loss" else 0.0,
        kl_estimator="k3",
        mask_truncated=rl.mask_truncated,
        old_from_current=old_from_current,
    )


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
    guard: NonFiniteGuard | None = None,
    old_from_current: bool = False,
) -> dict[str, float]:
    """One optimiser step over ``mb`` accumulated over micro-batches of ``micro_size`` rows.

    ``loss = aggregate(clipped surrogate) [+ kl_coef * aggregate(k3(pi, ref))]`` over the loss mask;
    each micro-batch loss is weighted by ``xp.micro_batch_weight`` so the step equals one over the
    whole minibatch (for every aggregation). The caller steps the schedule.
    """
    spec = loss_spec(rl, agg_constant, old_from_current)
    acc = policy_backward(model, mb, micro_size, spec, temperature=temperature)
    guard = guard if guard is not None else NonFiniteGuard("policy")
    acc["policy/grad_norm"] = guarded_step(model, optimizer, None, max_grad_norm, guard)
    return acc


def needs_old_logprobs(cfg: Any, minibatch: int) -> bool:
    """``ol.old_logprobs_needed`` for this run: one pass whose one minibatch holds the whole
    rollout, and no reference KL, skip the old-logprob forward."""
    r = cfg.rl
    return ol.old_logprobs_needed(
        cfg.batch.num_iterations,
        cfg.batch.prompts_per_rollout * cfg.batch.num_generations,
        minibatch,
        use_reference=r.kl_mode != "none" and r.kl_coef > 0,
    )


def update(
    learner: Learner,
    exp: xp.Experience,
    cfg: Any,
    *,
    temperature: float,
    seed: int,
    dist: Any = None,
) -> dict[str, float]:
    """``num_iterations`` passes over the kept rows, reshuffled (``seed + pass``); the last
    minibatch of a pass may be smaller (dynamic sampling shrinks the buffer).

    With an engine (``learner.engine``; ``dist`` its ranks): every rank holds the global buffer
    and draws the same minibatches of ``micro x accumulation x N`` rows; rank ``r`` runs its slice
    (``online_dist.rank_slice``), weighted relative to the global minibatch, loss times ``N``; the
    metric sums are added over ranks, so the step and the metrics equal one process's."""
    o = cfg.optim
    world = dist.world_size if dist is not None else 1
    mini = o.per_device_train_batch_size * o.gradient_accumulation_steps * world
    constant = float(cfg.sampling.max_new_tokens)
    reuse = not needs_old_logprobs(cfg, mini)
    totals: dict[str, float] = {}
    n = 0
    learner.model.train()
    for it in range(cfg.batch.num_iterations):
        for idx in xp.minibatches(len(exp), mini, seed + it):
            if learner.engine is not None:  # DDP / DeepSpeed (also in one process)
                mb, norm_mb = od.rank_slice(exp, idx, dist)
                m = policy_backward(
                    learner.model, mb, o.per_device_train_batch_size,
                    loss_spec(cfg.rl, constant, reuse), temperature=temperature, learner=learner,
                    norm_mb=norm_mb, scale=float(world),
                )  # fmt: skip
                m["policy/grad_norm"] = learner.step()  # clip, step, schedule (global norm)
            else:
                m = minibatch_step(
                    learner.model, learner.optimizer, exp.index(idx), o.per_device_train_batch_size,
                    cfg.rl, temperature=temperature, agg_constant=constant,
                    max_grad_norm=o.max_grad_norm, guard=learner.guard, old_from_current=reuse,
                )  # fmt: skip
                learner.scheduler.step()
            ol.accumulate(totals, m)
            n += 1
    totals = od.reduce_update_metrics(dist, totals)
    return {k: v / max(n, 1) for k, v in totals.items()} | {"train/optimizer_steps": float(n)}


def zero_loss_diagnostic(metrics: dict[str, float]) -> str:
    """One line explaining a policy loss of ~0 (it is expected, the gradient is not 0)."""
    return (
        f"policy/loss = {metrics.get('policy/loss', 0.0):.2e} is expected to be ~0: at the first "
        "pass rho = 1, so the loss is -mean(A), and group-relative advantages average to 0 per "
        f"group; the gradient is not 0 (grad norm {metrics.get('policy/grad_norm', 0.0):.3f}). "
        f"{metrics.get('rollout/zero_adv_group_frac', 0.0):.0%} of the groups had equal rewards "
        "(advantage 0: no signal)"
    )


# --- the run ------------------------------------------------------------------------------------

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


def run(cfg: Any) -> dict[str, Any]:
    """Roll out K per prompt, score, advantages by name, mu clipped updates; evaluate; save."""
    dist = init_distributed(cfg.dist)  # one process: no process group, nothing changes
    set_seed(cfg.optim.seed)  # the same on every rank: LoRA initialisation agrees
    m, o, r, k = cfg.model, cfg.optim, cfg.rl, cfg.batch.num_generations
    tag, multi = type(cfg).__name__.removesuffix("Config").lower(), dist.initialized
    with dist.main_first():  # the node's main rank builds the tiny model / data cache first
        tokenizer = ol.load_run_tokenizer(m, m.model_name_or_path)
        prompts, pstats = ol.load_prompts(tokenizer, cfg.data)
    ol.try_reward_functions(cfg.reward.reward_funcs, prompts)
    od.check_world(
        cfg.batch.prompts_per_rollout, k, o.per_device_train_batch_size,
        o.gradient_accumulation_steps, dist.world_size,
    )  # fmt: skip
    use_ref = r.kl_mode != "none" and r.kl_coef > 0
    n_rollouts = num_rollouts(cfg, len(prompts))
    mini = o.per_device_train_batch_size * o.gradient_accumulation_steps * dist.world_size
    per_rollout = cfg.batch.num_iterations * cfg.batch.prompts_per_rollout * k // mini
    need_old = needs_old_logprobs(cfg, mini)
    setup = od.setup_policy(cfg, tokenizer, dist, n_rollouts * per_rollout, use_reference=use_ref)
    policy, learner, reward = setup.policy, setup.learner, setup.reward
    logger = common.start_logger(cfg, dist, n_rollouts)  # writes on rank 0 only
    if multi:
        logger.print(f"[{tag}] policy: {setup.engine.describe()}")
    n_all, n_train = count_parameters(policy)  # full sizes under ZeRO-3 too
    logger.print(
        f"[{tag}] policy {n_all / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trainable); "
        f"advantages {r.advantage_estimator}, loss {r.loss_aggregation}, KL {r.kl_mode} "
        f"(beta {r.kl_coef:g}); reward {ol.describe_reward(reward)}; prompts: {pstats.describe()}"
    )
    logger.print(
        f"[{tag}] each rollout: {cfg.batch.prompts_per_rollout} prompts x {k} responses, "
        f"{cfg.batch.num_iterations} pass(es) in minibatches of {mini}"
        + (f" ({dist.world_size} processes)" if multi else "")
        + f" = up to {per_rollout} optimiser steps; {n_rollouts} rollouts"
        + ("" if need_old else "; old logprobs: the training forward's (one step a rollout, no KL)")
    )
    state = od.resume(cfg, setup, dist)
    step = state["step"] if state else 0
    if state:
        logger.print(f"[{tag}] resumed from {state['path']} at rollout {step}")
    temperature = xp.logprob_temperature(cfg.sampling)
    gen_ctx = setup.plan.hf_current if multi else contextlib.nullcontext
    # several processes: every rank evaluates the same prompts (ZeRO-3 forwards are collective)
    evaluate_all = ol.make_evaluator(tag, policy, tokenizer, reward, cfg, logger)

    save = ol.policy_saver(cfg, policy, setup.engine if multi else None, tokenizer)
    best = common.BestKeeper(cfg, save, logger, tag, dist)

    def evaluate(when: str, at: int) -> dict[str, float]:
        with gen_ctx():
            metrics = evaluate_all(when, at)
        best.update(metrics, at)
        return metrics

    summary: dict[str, Any] = {}
    if step == 0:
        summary["before"] = common.remember_before(cfg, evaluate("before training", step))
    common.recall_before(cfg, summary)  # a resumed run: the metrics before training, as measured
    timer = common.Timer()
    stream = ol.prompt_stream(prompts, cfg.batch.prompts_per_rollout, o.seed, start=step)
    last_eval, metrics, explained, explained_signal = -1, {}, False, False
    for note in ol.preflight_notes(tokenizer, prompts):
        logger.print(f"[{tag}] note: {note}")
    while step < n_rollouts:
        # this rank's whole prompt groups; the K samples of a prompt are contiguous rows
        rows = ol.rollout_rows(dist.shard(next(stream)), k)
        g = od.sample_rollout(
            setup, tokenizer, rows, cfg, dist, seed=o.seed * 100003 + step, timer=timer,
            temperature=temperature, use_reference=use_ref, need_old=need_old,
        )  # fmt: skip
        rollout, scores = g.rollout, g.scores  # the global batch
        if not explained_signal:
            explained_signal = True
            if note := ol.signal_note(scores, k):
                logger.print(f"[{tag}] warning: {note}")
        with timer("experience"):
            exp, e_metrics = xp.make_experience(
                rollout,
                g.old_lp,
                g.ref_lp,
                scores,
                kl_coef=r.kl_coef if use_ref else 0.0,
                kl_estimator=r.kl_estimator if r.kl_mode == "reward" else "k3",
                kl_in_reward=r.kl_mode == "reward",
                advantage_estimator=r.advantage_estimator,
                group_size=k,
                gamma=r.gamma,
                whiten_advantages=r.whiten_advantages,
            )
            if g.entropy is not None:  # else the update reports it from its forward
                e_metrics["policy/entropy"] = g.entropy
            n_groups = len(rollout) // k
            keep, n_dropped = filter_groups(scores, k) if k > 1 else (list(range(len(exp))), 0)
            e_metrics["rollout/zero_adv_group_frac"] = n_dropped / n_groups if k > 1 else 0.0
            e_metrics["rollout/truncated_frac"] = float(1 - rollout.has_eos.float().mean())
            if r.dynamic_sampling:
                e_metrics["rollout/groups_dropped"] = float(n_dropped)
                exp = exp.index(keep)
        with timer("train"):
            t_metrics = {}
            if len(exp):
                t_metrics = update(
                    learner, exp, cfg, temperature=temperature, seed=o.seed * 7919 + step,
                    dist=dist if multi else None,
                )  # fmt: skip
        step += 1
        metrics = {**g.r_metrics, **e_metrics, **t_metrics, **timer.pop()}
        metrics["train/lr"] = learner.scheduler.get_last_lr()[0]
        if not len(exp):
            logger.print(
                f"[{tag}] rollout {step}: every group had equal rewards, all dropped (no update)"
            )
        elif not explained and abs(metrics.get("policy/loss", 1.0)) < 1e-3:
            logger.print(f"[{tag}] note: {zero_loss_diagnostic(metrics)}")
            explained = True
        sample = (rows, g.texts, g.local_scores)
        ol.report_rollout(cfg, logger, tag, step, n_rollouts, metrics, SHOWN, sample)
        if cfg.log.eval_steps and step % cfg.log.eval_steps == 0:
            summary[f"rollout_{step}"] = evaluate(f"rollout {step}", step)
            last_eval = step
        if cfg.log.save_steps and step % cfg.log.save_steps == 0:
            od.save(cfg, step, setup, dist)

    ol.finish_summary(summary, evaluate, step, last_eval, metrics, SHOWN)
    summary["best"] = best.describe()
    od.finish(cfg, setup, dist, tokenizer, summary, logger, tag)
    best.restore(summary)
    return summary
