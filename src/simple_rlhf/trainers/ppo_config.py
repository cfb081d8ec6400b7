"""PPO configuration (``simple-rlhf ppo``): the sections, their cross-checks, and the batch plan
that turns the batch settings into rollouts and optimiser steps (echoed at start-up).

Batch semantics, in one place: a rollout samples ``prompts_per_rollout x responses_per_prompt``
responses (the buffer); each of ``ppo_epochs`` passes reshuffles the buffer and cuts it into
minibatches of ``per_device_train_batch_size x gradient_accumulation_steps`` responses, one actor
and one critic optimiser step each; so ``steps_per_rollout = ppo_epochs x buffer / minibatch`` and
the run makes ``num_rollouts x steps_per_rollout`` optimiser steps (each of actor and critic).
"""

from __future__ import annotations

import dataclasses
import math

from simple_rlhf.config import (
    DTYPES,
    ConfigError,
    DataArgs,
    DistArgs,
    HeldoutArgs,
    LogArgs,
    LoraArgs,
    OptimArgs,
    fld,
    section,
)
from simple_rlhf.losses.kl import KL_ESTIMATORS
from simple_rlhf.losses.reduce import AGGREGATIONS
from simple_rlhf.rollout.generate import SamplingArgs
from simple_rlhf.trainers.online import (
    REWARD_FUNCS_HELP,
    OnlineMonitorArgs,
    check_reward_sources,
    check_rollout_shape,
)

PPOMonitorArgs = OnlineMonitorArgs  # the name the PPO config has always used


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

    reward_funcs: list[str] = fld([], REWARD_FUNCS_HELP)
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
        60,
        "rollout iterations to run, no more than max_steps optimiser steps need (None: as many "
        "as max_steps needs, else num_train_epochs over the prompts)",
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
class PPODistArgs:
    """Several processes (torchrun / deepspeed launcher), as DeepSpeed-Chat's step 3: the actor
    (and the reference, which follows it) and the critic (and the reward model) each have their
    own ZeRO stage; DDP for a model whose stage is None when launched with several processes."""

    actor_zero_stage: int | None = fld(
        None, "DeepSpeed ZeRO stage 0-3 of the actor and the reference (None: no DeepSpeed)"
    )
    critic_zero_stage: int | None = fld(
        None, "DeepSpeed ZeRO stage 0-3 of the critic and the reward model (None: no DeepSpeed)"
    )
    actor_offload: str = fld("none", "actor ZeRO CPU offload: none, optimizer, param or all")
    critic_offload: str = fld("none", "critic ZeRO CPU offload: none, optimizer, param or all")
    offload_reference_model: bool = fld(
        False, "keep the frozen reference / reward model parameters on CPU (their stage is 3)"
    )
    deepspeed_config: str | None = fld(
        None, "a DeepSpeed JSON used for both models ('auto' values filled from the flags)"
    )
    local_rank: int = fld(-1, "rank on this node, passed by the deepspeed launcher")
    dist_backend: str | None = fld(None, "torch.distributed backend (None: nccl on GPU, else gloo)")

    @property
    def zero_stage(self) -> int | None:  # what infra/distributed.py reads: the actor's settings
        return self.actor_zero_stage

    @property
    def offload(self) -> str:
        return self.actor_offload

    @property
    def any_deepspeed(self) -> bool:
        return (
            self.actor_zero_stage is not None
            or self.critic_zero_stage is not None
            or self.deepspeed_config is not None
        )

    def model_args(self, role: str) -> DistArgs:
        """The DistArgs of ``role`` ("actor" or "critic"), validated like any trainer's."""
        stage = self.actor_zero_stage if role == "actor" else self.critic_zero_stage
        offload = self.actor_offload if role == "actor" else self.critic_offload
        return DistArgs(
            zero_stage=stage,
            offload=offload,
            deepspeed_config=self.deepspeed_config,
            local_rank=self.local_rank,
            dist_backend=self.dist_backend,
        )

    def __post_init__(self) -> None:
        for role in ("actor", "critic"):
            try:
                self.model_args(role)
            except ConfigError as e:
                raise ConfigError(f"{role}: {e}") from None
        if self.offload_reference_model and 3 not in (
            self.actor_zero_stage,
            self.critic_zero_stage,
        ):
            raise ConfigError("offload_reference_model: needs --actor/--critic-zero-stage 3")


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
            learning_rate=5e-5,
            lr_scheduler_type="constant",
            warmup_ratio=0.0,
            per_device_train_batch_size=8,
            gradient_accumulation_steps=1,
        )
    )
    lora: LoraArgs = section(LoraArgs)
    log: LogArgs = section(lambda: LogArgs(output_dir="outputs/ppo", logging_steps=1))
    monitor: PPOMonitorArgs = section(PPOMonitorArgs)
    heldout: HeldoutArgs = section(HeldoutArgs)
    dist: PPODistArgs = section(PPODistArgs)

    def __post_init__(self) -> None:
        validate(self)


def validate(cfg: PPOConfig) -> None:
    """Cross-section checks with messages that say what to change."""
    b, p = cfg.batch, cfg.ppo
    check_reward_sources(cfg.model.reward_model, cfg.reward)
    for name in ("prompts_per_rollout", "responses_per_prompt", "ppo_epochs", "forward_batch_size"):
        if getattr(b, name) < 1:
            raise ConfigError(f"{name}: must be >= 1")
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
    if p.ema_decay is not None and cfg.dist.actor_zero_stage == 3:
        raise ConfigError(
            "ema_decay: not supported with the actor at ZeRO-3 (partitioned parameters); "
            "use --actor-zero-stage 0, 1 or 2"
        )
    check_rollout_shape(cfg, b.prompts_per_rollout, b.responses_per_prompt)


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
    world_size: int = 1  # processes; each takes minibatch / world_size rows of a minibatch

    def describe(self) -> str:
        return (
            f"each rollout: {self.prompts_per_rollout} prompts x {self.responses_per_prompt} "
            f"responses = {self.rollout_batch} responses; {self.ppo_epochs} PPO epochs x "
            f"{self.rollout_batch // self.minibatch} minibatches of {self.minibatch} "
            f"(= {self.micro_batch} per micro-batch x {self.accumulation} accumulated"
            + (f" x {self.world_size} processes" if self.world_size > 1 else "")
            + ") = "
            f"{self.steps_per_rollout} optimiser steps per rollout; {self.num_rollouts} rollouts "
            f"= {self.total_steps} optimiser steps; {self.num_rollouts * self.prompts_per_rollout}"
            f" prompts used of {self.n_prompts} "
            f"({self.num_rollouts * self.prompts_per_rollout / max(self.n_prompts, 1):.2f} epochs)"
        )


def batch_plan(cfg: PPOConfig, n_prompts: int, world_size: int = 1) -> BatchPlan:
    """Rollouts: ``num_rollouts``, capped by the rollouts that ``max_steps`` optimiser steps
    need when that is set; with ``num_rollouts`` None: those, else ``num_train_epochs`` over
    the prompts.

    With ``world_size`` N processes the rollout batch stays global (each rank samples its
    ``1/N``) and a minibatch is ``per_device_train_batch_size x gradient_accumulation_steps x N``
    responses (each rank takes its slice), so the rollout batch must be a multiple of it.
    """
    b, o = cfg.batch, cfg.optim
    rollout = b.prompts_per_rollout * b.responses_per_prompt
    mini = o.per_device_train_batch_size * o.gradient_accumulation_steps * world_size
    if rollout % mini:
        raise ConfigError(
            f"the rollout batch ({rollout} responses) must be a multiple of the global minibatch "
            f"(per_device_train_batch_size x gradient_accumulation_steps x {world_size} "
            f"processes = {mini})"
        )
    per_rollout = b.ppo_epochs * rollout // mini
    if o.max_steps is not None:
        n = math.ceil(o.max_steps / per_rollout)
        n = n if b.num_rollouts is None else min(n, b.num_rollouts)
    elif b.num_rollouts is not None:
        n = b.num_rollouts
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
        world_size,
    )
