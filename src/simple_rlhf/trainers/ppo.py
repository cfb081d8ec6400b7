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
Deviations: one "step" of logging/eval/save counts
rollout iterations (one rollout + its PPO epochs), not optimiser steps; the critic is a separate
model (no shared backbone), fully fine-tuned even when the actor uses LoRA.

One CPU, tiny default (SFT model from step 1, RM from step 2; 50-60 CPU-seconds, 1-2 minutes on
an idle machine): held-out greedy gold 0.755 -> 0.90 (mean of 3 seeds with an earlier RM and
actor lr 2e-4); 0.770 -> 0.966 with today's defaults (likelihood RM, actor lr 5e-5, seed 1234).
The actor's lr 5e-5 comes from tasks the project was not tuned on: with a task's exact reward,
2e-4 lost 0.07 on the suite's ``add`` task and 5e-5 gained 0.17
(benchmarks/generalization_results.md). With ``--kl-coef 0``
the RM is over-optimised: its score doubles while the gold reward falls to 0.07 and the KL
reaches 22 nats by rollout 100 (benchmarks/ppo_results.md, benchmarks/ppo_overopt.py)::

    simple-rlhf ppo --actor-model-name-or-path outputs/sft --reward-model outputs/reward \\
        --output-dir outputs/ppo

With a Python reward instead of (or added to) the RM::

    simple-rlhf ppo --actor-model-name-or-path outputs/sft --reward-funcs tiny_gold

A real model, LoRA actor (reference = adapter disabled)::

    simple-rlhf ppo --actor-model-name-or-path outputs/opt-sft --reward-model outputs/opt-rm \\
        --data-path Dahoas/rm-static --lora-dim 64 --learning-rate 1e-5 \\
        --critic-learning-rate 5e-6 --max-new-tokens 256 --max-seq-len 512

Several GPUs (or CPU processes over gloo), as DeepSpeed-Chat's step 3: the actor (and the reference)
and the critic (and the reward model) each get a ZeRO stage, DDP for a model without one::

    torchrun --nproc_per_node 8 -m simple_rlhf ppo --actor-zero-stage 3 --critic-zero-stage 2 \
        --actor-model-name-or-path outputs/sft --reward-model outputs/reward ...
    deepspeed --num_gpus 8 --module simple_rlhf ppo --actor-zero-stage 2 --critic-zero-stage 3 \
        --critic-offload all --offload-reference-model ...

Semantics: ``prompts_per_rollout`` stays the global rollout batch; rank ``r`` samples, scores and
evaluates (logprobs, reference, values) its contiguous slice, then the pieces are gathered on every
rank, so the KL, reward shaping, GAE, whitening, the KL controller and the metrics are those of
the global batch. A minibatch is ``per_device_train_batch_size x gradient_accumulation_steps x N``
responses drawn identically on every rank; each rank runs its slice, the loss weighted by the
global counts and multiplied by ``N`` (gradients are averaged over ranks), so N ranks equal one
process on the same rollout batch (tested with greedy decoding). Actor / critic forwards of the
update go through the DDP / DeepSpeed wrapper (``head_values`` for the critic). Under ZeRO-3 the
actor generates with ``synced_gpus`` (transformers: ranks that finished keep stepping until all
have), and every rank evaluates the same held-out prompts. Rank 0 saves the actor and the critic
(gathered under ZeRO-3); ``--save-steps`` writes resumable checkpoints (``infra/dist_checkpoint``).
PPO-ptx: one global stream of SFT batches of ``per_device_train_batch_size x N`` examples (the
batches one process draws with that size), each rank forwarding its slice; the loss of batch ``j``
is the token mean over the whole global batch (token counts all-reduced), so N ranks equal one
process on the same global SFT batches. ``--ema-decay`` with the actor at ZeRO 0-2 (or DDP): every
rank holds the full actor after each step and keeps the same EMA copy (rank 0 saves it, and the
checkpoints carry it); refused at ZeRO-3 (partitioned parameters).

Code: the configuration and batch plan are in ``trainers/ppo_config.py``, the update (actor and
critic minibatch steps, PPO-ptx, EMA) in ``trainers/ppo_update.py``, what PPO shares with the
critic-free trainers (models, prompt stream, rollout + scoring, policy loss, evaluation and
reporting) in ``trainers/online.py``; this module keeps the visible loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch

from simple_rlhf.config import ConfigError
from simple_rlhf.data.pipeline import load_encoded
from simple_rlhf.infra.checkpoint import latest_checkpoint, save_checkpoint, save_hf_model
from simple_rlhf.infra.dist_checkpoint import load_checkpoint as load_dist_checkpoint
from simple_rlhf.infra.dist_checkpoint import save_checkpoint as save_dist_checkpoint
from simple_rlhf.infra.distributed import count_parameters, init_distributed
from simple_rlhf.infra.seed import set_seed
from simple_rlhf.losses.kl import AdaptiveKLController, FixedKLController
from simple_rlhf.models.loading import disable_dropout
from simple_rlhf.models.reward import load_reward_model
from simple_rlhf.rollout import experience as xp
from simple_rlhf.trainers import common
from simple_rlhf.trainers import online as ol
from simple_rlhf.trainers.online import Learner
from simple_rlhf.trainers.online_dist import gather_rollout, global_entropy
from simple_rlhf.trainers.ppo_config import (
    BatchPlan,
    PPOBatchArgs,
    PPOConfig,
    PPODistArgs,
    PPOLossArgs,
    PPOModelArgs,
    PPOMonitorArgs,
    PPORewardArgs,
    batch_plan,
    validate,
)
from simple_rlhf.trainers.ppo_dist import EMA_ZERO3, ema_of, load_ema, save_ema
from simple_rlhf.trainers.ppo_update import (
    EMA,
    actor_minibatch_step,
    critic_minibatch_step,
    critic_values,
    cycle_ptx,
    ppo_update,
    ptx_loss,
)

__all__ = [
    "EMA",
    "BatchPlan",
    "Learner",
    "PPOBatchArgs",
    "PPOConfig",
    "PPODistArgs",
    "PPOLossArgs",
    "PPOModelArgs",
    "PPOMonitorArgs",
    "PPORewardArgs",
    "actor_minibatch_step",
    "batch_plan",
    "critic_minibatch_step",
    "load_models",
    "ppo_update",
    "ptx_loss",
    "run",
    "validate",
]

SHOWN = (
    "reward/score_mean",
    "objective/kl",
    "policy/entropy",
    "policy/clipfrac",
    "critic/explained_variance",
    "rollout/response_len",
    "rollout/eos_rate",
)


def load_models(cfg: PPOConfig, tokenizer: Any) -> tuple[Any, Any | None, Any]:
    """``(actor, reference or None, critic)``; dropout 0 everywhere; reference frozen.

    The reference is ``None`` when the actor trains LoRA adapters only: then it is the actor with
    the adapter disabled (see :func:`~simple_rlhf.rollout.experience.reference`). Only the actor
    may be loaded in 4 bits (``--load-in-4bit``); the critic is a full-precision scalar-head model
    initialised from ``critic_model_name_or_path``, else the RM, else the actor.
    """
    m = cfg.model
    actor, ref = ol.load_policy(m.actor_model_name_or_path, m, cfg.lora, tokenizer)
    critic = load_reward_model(
        critic_source(cfg),
        tokenizer,
        dtype=m.dtype,
        dropout=0.0,
        trust_remote_code=m.trust_remote_code,
        gradient_checkpointing=m.gradient_checkpointing,
    )
    disable_dropout(critic)
    return actor, ref, critic


def critic_source(cfg: PPOConfig) -> str:
    """Where the critic starts: ``critic_model_name_or_path``, else the RM, else the actor."""
    m = cfg.model
    return m.critic_model_name_or_path or m.reward_model or m.actor_model_name_or_path


@dataclasses.dataclass
class Models:
    """What the loop works with: HF modules for no-grad forwards / generation / saving, the
    learners for the updates, and (several processes) the engines and plans."""

    actor: Any  # HF module (generate, logprobs, evaluation)
    ref: Any | None
    critic: Any  # HF module (values at rollout time)
    a: Learner
    c: Learner
    reward: Any
    engines: dict[str, Any] = dataclasses.field(default_factory=dict)  # "actor", "critic"
    actor_plan: Any = None
    ema: EMA | None = None  # --ema-decay: the actor's EMA copy (same on every rank)


def setup_models(cfg: PPOConfig, tokenizer: Any, plan: BatchPlan, dist: Any) -> Models:
    """Load the four models and build the learners. One process (no launcher, no DeepSpeed):
    exactly the single-process set-up. Several: the actor (LoRA applied) and the reference on the
    actor's plan (``--actor-zero-stage``, ZeRO-3 partitions at load), the critic and the RM on the
    critic's; ``--offload-reference-model`` keeps the frozen models' parameters on CPU (ZeRO-3)."""
    m, o, p = cfg.model, cfg.optim, cfg.ppo
    fb = cfg.batch.forward_batch_size
    critic_o = dataclasses.replace(
        o,
        learning_rate=p.critic_learning_rate,
        lr_scheduler_type=p.critic_lr_scheduler_type or o.lr_scheduler_type,
    )
    actor_steps = max(plan.num_rollouts - p.critic_warmup_rollouts, 0) * plan.steps_per_rollout
    if not dist.initialized:
        actor, ref, critic = load_models(cfg, tokenizer)
        reward = ol.build_run_reward(m.reward_model, cfg.reward, m, fb)
        a_opt = common.build_optimizer(actor, o, cfg.lora)
        c_opt = common.build_optimizer(critic, critic_o)
        a_sched = common.build_scheduler(a_opt, o, actor_steps)
        c_sched = common.build_scheduler(c_opt, critic_o, plan.total_steps)
        a = Learner(actor, a_opt, a_sched, o.max_grad_norm)
        c = Learner(critic, c_opt, c_sched, o.max_grad_norm)
        return Models(actor, ref, critic, a, c, reward, ema=ema_of(actor, p.ema_decay))
    d = cfg.dist
    a_plan = dist.plan(o, m.dtype)  # --actor-zero-stage / --actor-offload (or the JSON)
    if p.ema_decay and a_plan.zero_stage == 3:
        raise ConfigError(EMA_ZERO3)
    c_stage = d.critic_zero_stage
    if c_stage is None and d.deepspeed_config is None:
        c_plan = dist.plan(critic_o, m.dtype, zero_stage=None)
    elif c_stage is None:
        c_plan = dist.plan(critic_o, m.dtype, offload=d.critic_offload)
    else:
        c_plan = dist.plan(critic_o, m.dtype, zero_stage=c_stage, offload=d.critic_offload)

    def frozen_plan(base: Any, stage: int | None) -> Any:
        if d.offload_reference_model and base.zero_stage == 3:
            return dist.plan(o, m.dtype, zero_stage=3 if stage is None else stage, offload="param")
        return base

    with a_plan.loading():
        actor, _ = ol.load_policy(
            m.actor_model_name_or_path, m, cfg.lora, tokenizer, with_reference=False
        )
    ref = None
    if not (cfg.lora.lora_dim > 0 and cfg.lora.only_optimize_lora):
        r_plan = frozen_plan(a_plan, d.actor_zero_stage)
        with r_plan.loading():
            ref = common.load_frozen_lm(m.actor_model_name_or_path, tokenizer, m)
        ref = r_plan.wrap_frozen(ref).module
    with c_plan.loading():
        critic = load_reward_model(
            critic_source(cfg),
            tokenizer,
            dtype=m.dtype,
            dropout=0.0,
            trust_remote_code=m.trust_remote_code,
            gradient_checkpointing=m.gradient_checkpointing,
            head_seed=o.seed,
        )
    disable_dropout(critic)
    rm_plan = frozen_plan(c_plan, c_stage)
    with rm_plan.loading():
        reward = ol.build_run_reward(m.reward_model, cfg.reward, m, fb)
    if "rm" in reward.names:  # the RM follows the critic's stage (ZeRO-3: partitioned)
        scorer = reward.sources[reward.names.index("rm")].scorer
        scorer.model = rm_plan.wrap_frozen(scorer.model).module
    ema = ema_of(actor, p.ema_decay, dist.device)  # before wrapping: the plain HF module
    a_opt = common.build_optimizer(actor, o, cfg.lora)
    c_opt = common.build_optimizer(critic, critic_o)
    a_eng = a_plan.wrap(actor, a_opt, common.build_scheduler(a_opt, o, actor_steps))
    c_eng = c_plan.wrap(critic, c_opt, common.build_scheduler(c_opt, critic_o, plan.total_steps))
    a = Learner(a_eng.model, a_eng.optimizer, a_eng.scheduler, o.max_grad_norm, engine=a_eng)
    c = Learner(c_eng.model, c_eng.optimizer, c_eng.scheduler, o.max_grad_norm, engine=c_eng)
    engines = {"actor": a_eng, "critic": c_eng}
    return Models(a_eng.module, ref, c_eng.module, a, c, reward, engines, a_plan, ema)


def rollout_values(critic: Any, rollout: Any, batch_size: int, distributed: bool) -> torch.Tensor:
    """Critic values ``[b, R]`` at rollout time (no grad). Several processes: through the whole
    module (``head_values``; under ZeRO-3 every submodule gathers its own parameters)."""
    if not distributed:
        return xp.compute_values(critic, rollout, batch_size=batch_size)
    was = critic.training
    critic.eval()
    with torch.no_grad():
        parts = [
            critic_values(critic, rollout.index(range(s, min(s + batch_size, len(rollout)))))
            for s in range(0, len(rollout), batch_size)
        ]
    critic.train(was)
    return torch.cat(parts)


def run(cfg: PPOConfig) -> dict[str, Any]:
    """Roll out, score, update; evaluate before/after (and every eval_steps rollouts); save."""
    # ---- setup ----
    dist = init_distributed(cfg.dist, deepspeed=cfg.dist.any_deepspeed)
    set_seed(cfg.optim.seed)
    m, o, p, out_dir = cfg.model, cfg.optim, cfg.ppo, cfg.log.output_dir
    multi = dist.initialized
    with dist.main_first():  # the node's main rank builds the data cache first
        tokenizer = ol.load_run_tokenizer(m, m.actor_model_name_or_path)
        prompts, pstats = ol.load_prompts(tokenizer, cfg.data)
        ptx_data = (
            load_encoded(tokenizer, cfg.data, "sft", step=1, split="train")[0]
            if (p.ptx_coef > 0)
            else None
        )
    ol.try_reward_functions(cfg.reward.reward_funcs, prompts)
    plan = batch_plan(cfg, len(prompts), dist.world_size)
    fb = cfg.batch.forward_batch_size
    md = setup_models(cfg, tokenizer, plan, dist)
    actor, ref, critic, a, c, reward = md.actor, md.ref, md.critic, md.a, md.c, md.reward
    kl_ctl = (
        AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon)
        if p.adaptive_kl
        else FixedKLController(p.kl_coef)
    )
    ema = md.ema
    logger = common.start_logger(cfg, dist, plan.num_rollouts)
    if multi:
        logger.print(f"[ppo] actor: {md.engines['actor'].describe()}")
        logger.print(f"[ppo] critic: {md.engines['critic'].describe()}")
    n_all, n_train = count_parameters(actor)  # full sizes under ZeRO-3 too
    logger.print(
        f"[ppo] actor {n_all / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trainable), reference: "
        f"{'actor with LoRA disabled' if ref is None else 'frozen copy'}, critic from "
        f"{critic_source(cfg)}, reward: {ol.describe_reward(reward)}; prompts: {pstats.describe()}"
    )
    if "rm" in reward.names and not reward.sources[reward.names.index("rm")].normalized:
        logger.print("[ppo] warning: the reward model has no reward_stats.json: raw scores used")
    logger.print(f"[ppo] batch plan: {plan.describe()}")

    models = {"actor": actor, "critic": critic} | ({"actor_ema": ema.model} if ema else {})
    opts, scheds = (
        {"actor": a.optimizer, "critic": c.optimizer},
        {
            "actor": a.scheduler,
            "critic": c.scheduler,
        },
    )
    if multi:
        ckpt = latest_checkpoint(out_dir) if cfg.log.resume else None
        state = load_dist_checkpoint(ckpt, md.engines) if ckpt is not None else None
        if state is not None:
            state["path"] = str(ckpt)
            load_ema(ckpt, ema)
    else:
        state = ol.resume(cfg, models, opts, scheds)
    step = state["step"] if state else 0
    if state:
        kl_ctl.load_state_dict(state["kl_controller"])
        logger.print(f"[ppo] resumed from {state['path']} at rollout {step}")

    ptx_iter = None
    if ptx_data is not None:  # several ranks: each its slice of the same global batches
        used = max(step - p.critic_warmup_rollouts, 0) * plan.steps_per_rollout * plan.accumulation
        ptx_iter = cycle_ptx(
            ptx_data, plan.micro_batch, tokenizer.pad_token_id, o.seed,
            dist=dist if multi else None, start=used,
        )  # fmt: skip
    temperature = xp.logprob_temperature(cfg.sampling)
    gen_ctx = md.actor_plan.hf_current if multi else contextlib.nullcontext
    # several processes: every rank evaluates the same prompts (ZeRO-3 forwards are collective)
    evaluate_all = ol.make_evaluator("ppo", actor, tokenizer, reward, cfg, logger)

    save = ol.policy_saver(cfg, actor, md.engines["actor"] if multi else None, tokenizer)
    best = common.BestKeeper(cfg, save, logger, "ppo", dist)

    def evaluate(when: str, at: int) -> dict[str, float]:
        with gen_ctx():
            metrics = evaluate_all(when, at)
        best.update(metrics, at)
        return metrics

    summary: dict[str, Any] = {"batch_plan": dataclasses.asdict(plan)}
    if step == 0:
        with gen_ctx():
            pre = ol.reward_model_preflight(actor, tokenizer, reward, cfg, logger, "ppo")
        summary["before"] = common.remember_before(
            cfg, {**evaluate("before training", step), **pre}
        )
    common.recall_before(cfg, summary)  # a resumed run: the metrics before training, as measured

    # ---- train loop ----
    timer = common.Timer()
    stream = ol.prompt_stream(prompts, cfg.batch.prompts_per_rollout, o.seed, start=step)
    last_eval, metrics, signal_checked = -1, {}, False
    for note in ol.preflight_notes(tokenizer, prompts):
        logger.print(f"[ppo] note: {note}")
    while step < plan.num_rollouts:
        rows = ol.rollout_rows(next(stream), cfg.batch.responses_per_prompt)
        rows = dist.shard(rows)  # this rank's contiguous slice of the global rollout batch
        with gen_ctx():  # ZeRO-3: generate(synced_gpus) until every rank is done
            rollout, texts, scores, r_metrics = ol.sample_and_score(
                actor, tokenizer, rows, cfg, reward,
                seed=dist.sampling_seed(o.seed * 100003 + step), timer=timer,
            )  # fmt: skip
        with timer("experience"):
            old_lp, ref_lp, entropy = ol.old_and_reference_logprobs(
                actor, ref, rollout, temperature=temperature, batch_size=fb
            )
            values = rollout_values(critic, rollout, fb, multi)
            if multi:  # statistics of the global batch: gather it on every rank
                entropy = global_entropy(dist, entropy, rollout)
                r_metrics = dist.mean_metrics(r_metrics)  # equal shards: the global means
                rollout, g = gather_rollout(
                    dist, tokenizer.pad_token_id, rollout,
                    {"old": old_lp, "ref": ref_lp, "values": values, "scores": scores},
                )  # fmt: skip
                old_lp, ref_lp, values, scores_all = g["old"], g["ref"], g["values"], g["scores"]
            else:
                scores_all = scores
            if not signal_checked:
                signal_checked = True
                if note := ol.signal_note(scores_all, cfg.batch.responses_per_prompt):
                    logger.print(f"[ppo] warning: {note}")
            exp, e_metrics = xp.make_experience(
                rollout,
                old_lp,
                ref_lp,
                scores_all,
                values=values,
                kl_coef=kl_ctl.value,
                kl_estimator=p.kl_estimator,
                kl_in_reward=not p.kl_in_loss,
                gamma=p.gamma,
                lam=p.lam,
                whiten_rewards=cfg.reward.whiten_rewards,
                whiten_advantages=p.whiten_advantages,
            )
            e_metrics["policy/entropy"] = entropy
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
                agg_constant=float(cfg.sampling.max_new_tokens),
                dist=dist if multi else None,
            )
        kl_ctl.update(e_metrics["objective/kl"], len(exp))
        step += 1
        metrics = {**r_metrics, **e_metrics, **t_metrics, **timer.pop()}
        metrics["train/actor_lr"] = a.scheduler.get_last_lr()[0]
        metrics["train/critic_lr"] = c.scheduler.get_last_lr()[0]
        ol.report_rollout(
            cfg, logger, "ppo", step, plan.num_rollouts, metrics, SHOWN, (rows, texts, scores)
        )
        if cfg.log.eval_steps and step % cfg.log.eval_steps == 0:
            summary[f"rollout_{step}"] = evaluate(f"rollout {step}", step)
            last_eval = step
        if cfg.log.save_steps and step % cfg.log.save_steps == 0:
            ckpt_state = {"kl_controller": kl_ctl.state_dict()}
            if multi:
                path = save_dist_checkpoint(out_dir, step, md.engines, ckpt_state)
                save_ema(path, ema, dist)
            else:
                save_checkpoint(
                    out_dir, step, models=models, optimizers=opts, schedulers=scheds,
                    state=ckpt_state,
                )  # fmt: skip

    # ---- evaluate + save ----
    ol.finish_summary(summary, evaluate, step, last_eval, metrics, SHOWN)
    if ema is not None:  # several processes: rank 0 (every rank holds the same copy)
        if dist.is_main:
            save_hf_model(
                ema.model, tokenizer, f"{out_dir}/actor_ema", merge_lora=cfg.lora.merge_lora
            )
        dist.barrier()
    summary["best"] = best.describe()
    if not multi:
        save_hf_model(critic, tokenizer, f"{out_dir}/critic")
        logger.print(f"[ppo] saved the critic to {out_dir}/critic")
        common.finish_training(actor, tokenizer, cfg, summary, logger, "ppo")
    else:
        summary["world_size"] = dist.world_size
        md.engines["critic"].save_hf(tokenizer, f"{out_dir}/critic")  # rank 0, gathered if ZeRO-3
        logger.print(f"[ppo] saved the critic to {out_dir}/critic")
        common.finish_engine_training(md.engines["actor"], tokenizer, cfg, summary, logger, "ppo")
    best.restore(summary)
    return summary
