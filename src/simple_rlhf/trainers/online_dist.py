"""Several processes for the critic-free online trainers (GRPO / RLOO / REINFORCE++ in
``trainers/grpo.py``): one policy engine on ``infra/distributed.py`` (DDP, or DeepSpeed ZeRO 0-3
with offload), the reference and the reward model following the policy's stage.

The semantics are PPO's (``trainers/ppo.py``): ``prompts_per_rollout`` is the global rollout batch.
Rank ``r`` takes its contiguous slice of the *prompts* (:func:`check_world`: a multiple of the
world size, so every rank samples the same number of whole groups; the ``K`` samples of a prompt
stay on one rank), generates, scores and computes the old / reference logprobs of its rows; then
:func:`gather_rollout` puts the global batch on every rank, so the advantages (group baselines,
REINFORCE++'s batch whitening), the KL, dynamic sampling and every metric are those of the global
batch. The update draws the same minibatches of ``per_device_train_batch_size x
gradient_accumulation_steps x N`` rows on every rank; each rank runs its slice
(:func:`rank_slice`) with the micro-batch weights of the global minibatch and its loss times
``N`` (gradients are averaged over ranks): ``sum_r N * sum_j w_rj l_rj / N = sum_j w_j l_j``, the
single-process step. A minibatch smaller than ``N x`` the micro-batches (dynamic sampling shrinks
the buffer) is padded with blank rows (response mask 0: weight 0, no loss) so that every rank runs
the same number of forwards (needed by ZeRO-3 and DDP).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from simple_rlhf.config import ConfigError, DistArgs, fld
from simple_rlhf.rollout import experience as xp
from simple_rlhf.rollout.generate import Rollout, concat_rollouts
from simple_rlhf.trainers import common
from simple_rlhf.trainers import online as ol
from simple_rlhf.trainers.online import Learner

__all__ = [
    "GlobalRollout",
    "PolicyDistArgs",
    "PolicySetup",
    "check_world",
    "gather_rollout",
    "global_entropy",
    "rank_slice",
    "reduce_update_metrics",
    "sample_rollout",
    "setup_policy",
]


@dataclasses.dataclass(frozen=True)
class PolicyDistArgs(DistArgs):
    """Several processes (torchrun / deepspeed launcher): DDP, or DeepSpeed ZeRO 0-3 for the
    policy; the reference and the reward model follow its stage (ZeRO-3: partitioned)."""

    offload_reference_model: bool = fld(
        False, "keep the frozen reference / reward model parameters on CPU (needs --zero-stage 3)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.offload_reference_model and self.zero_stage != 3:
            raise ConfigError("offload_reference_model: needs --zero-stage 3")


def check_world(prompts: int, responses: int, micro: int, accumulation: int, world: int) -> None:
    """With ``world`` processes: whole groups on every rank (``prompts % world == 0``) and a
    rollout buffer that splits into global minibatches of ``micro x accumulation x world``."""
    if world == 1:
        return
    if prompts % world:
        raise ConfigError(
            f"prompts_per_rollout: {prompts} prompts cannot be split over {world} processes (each "
            "rank samples whole groups): use a multiple of the number of processes"
        )
    mini = micro * accumulation * world
    if (prompts * responses) % mini:
        raise ConfigError(
            f"the rollout batch ({prompts} x {responses} = {prompts * responses}) must be a "
            f"multiple of the global minibatch (per_device_train_batch_size {micro} x "
            f"gradient_accumulation_steps {accumulation} x {world} processes = {mini})"
        )


@dataclasses.dataclass
class PolicySetup:
    """The policy's HF module (generation, no-grad forwards, saving), the frozen reference (or
    ``None``: LoRA disabled, or KL off), the learner, the reward source; and with several
    processes the engine and its plan (``None`` alone)."""

    policy: Any
    ref: Any | None
    learner: Learner
    reward: Any
    engine: Any = None
    plan: Any = None


def setup_policy(
    cfg: Any, tokenizer: Any, dist: Any, total_steps: int, *, use_reference: bool
) -> PolicySetup:
    """Load the policy (LoRA as configured), the reference and the reward source, build the
    optimiser and the schedule. One process (no launcher, no ``--zero-stage``): exactly the
    single-process set-up. Several: everything on the policy's plan (ZeRO-3 partitions at load);
    ``--offload-reference-model`` keeps the frozen models' parameters on CPU."""
    m, o, fb = cfg.model, cfg.optim, cfg.batch.forward_batch_size
    if not dist.initialized:
        policy, ref = ol.load_policy(
            m.model_name_or_path, m, cfg.lora, tokenizer, with_reference=use_reference
        )
        reward = ol.build_run_reward(cfg.reward.reward_model, cfg.reward, m, fb)
        opt = common.build_optimizer(policy, o, cfg.lora)
        sched = common.build_scheduler(opt, o, total_steps)
        return PolicySetup(policy, ref, Learner(policy, opt, sched, o.max_grad_norm), reward)
    from simple_rlhf.models.lora import check_qlora

    plan = dist.plan(o, m.dtype)
    check_qlora(cfg.lora, plan.zero_stage)
    frozen = plan
    if cfg.dist.offload_reference_model:
        frozen = dist.plan(o, m.dtype, zero_stage=3, offload="param")
    with plan.loading():
        policy, _ = ol.load_policy(
            m.model_name_or_path, m, cfg.lora, tokenizer, with_reference=False
        )
    ref = None
    if use_reference and not (cfg.lora.lora_dim > 0 and cfg.lora.only_optimize_lora):
        with frozen.loading():
            ref = common.load_frozen_lm(m.model_name_or_path, tokenizer, m)
        ref = frozen.wrap_frozen(ref).module
    with frozen.loading():
        reward = ol.build_run_reward(cfg.reward.reward_model, cfg.reward, m, fb)
    if "rm" in reward.names:  # ZeRO-3: partitioned like the policy; else whole on every rank
        scorer = reward.sources[reward.names.index("rm")].scorer
        scorer.model = frozen.wrap_frozen(scorer.model).module
    opt = common.build_optimizer(policy, o, cfg.lora)
    engine = plan.wrap(policy, opt, common.build_scheduler(opt, o, total_steps))
    learner = Learner(engine.model, engine.optimizer, engine.scheduler, o.max_grad_norm, engine)
    return PolicySetup(engine.module, ref, learner, reward, engine, plan)


def gather_rollout(
    dist: Any, pad_id: int, rollout: Rollout, per_row: Mapping[str, torch.Tensor]
) -> tuple[Rollout, dict[str, torch.Tensor]]:
    """The global rollout batch on every rank: the ranks' rows in rank order (= the global batch),
    prompts re-left-padded, ``[b, R]`` tensors right-padded with 0 to the widest response, ``[b]``
    tensors concatenated. One process: unchanged."""
    if dist.world_size == 1:
        return rollout, dict(per_row)
    mine = {"rollout": rollout.to("cpu"), **{k: v.cpu() for k, v in per_row.items()}}
    parts: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(parts, mine)
    glob = concat_rollouts([q["rollout"] for q in parts], pad_id).to(dist.device)
    R = glob.response_ids.shape[1]
    out = {}
    for k in per_row:
        ts = [q[k] for q in parts]
        if ts[0].dim() == 2:
            ts = [torch.nn.functional.pad(t, (0, R - t.shape[1])) for t in ts]
        out[k] = torch.cat(ts).to(dist.device)
    return glob, out


def global_entropy(dist: Any, entropy: float, rollout: Rollout) -> float:
    """The token-mean entropy of the global batch from each rank's token-mean:
    ``sum_r H_r n_r / sum_r n_r`` (``n_r`` response tokens of rank ``r``)."""
    n = float(rollout.response_mask.sum())
    h_sum, n_all = dist.all_reduce_sum([entropy * n, n])
    return h_sum / max(n_all, 1.0)


def _blank(exp: xp.Experience, n_real: int) -> xp.Experience:
    """Rows from ``n_real`` on with an empty response mask: they are forwarded (same forwards on
    every rank) but carry no token, so their loss and micro-batch weight are 0."""
    if n_real >= len(exp):
        return exp
    mask = exp.rollout.response_mask.clone()
    mask[n_real:] = 0
    return dataclasses.replace(exp, rollout=dataclasses.replace(exp.rollout, response_mask=mask))


def rank_slice(
    exp: xp.Experience, idx: list[int], dist: Any
) -> tuple[xp.Experience, xp.Experience]:
    """``(this rank's rows, the global minibatch)`` of the minibatch ``idx``: a contiguous slice,
    every rank the same row count (:meth:`Dist.shard_padded`; padding rows blanked)."""
    mine, n_real = dist.shard_padded(idx)
    return _blank(exp.index(mine), n_real), exp.index(idx)


def reduce_update_metrics(dist: Any, totals: Mapping[str, float]) -> dict[str, float]:
    """The weighted metric sums of an update added over ranks (each rank's are over its slice,
    weighted relative to the global minibatch); the gradient norm is global already, so it is
    averaged instead."""
    if dist is None or dist.world_size == 1:
        return dict(totals)
    keys = sorted(totals)
    sums = dist.all_reduce_sum([totals[k] for k in keys])
    world = dist.world_size
    return {k: v / world if k.endswith("grad_norm") else v for k, v in zip(keys, sums, strict=True)}


@dataclasses.dataclass
class GlobalRollout:
    """One rollout seen from a rank: the global batch (``rollout``, ``old_lp``/``ref_lp``
    ``[B, R]``, ``scores`` ``[B]``, reward metrics and entropy of the global batch) and this
    rank's own rows (``texts``, ``local_scores``, for the printed samples)."""

    rollout: Rollout
    old_lp: torch.Tensor
    ref_lp: torch.Tensor
    scores: torch.Tensor
    entropy: float | None  # None: no old-logprob forward ran (the update reports it)
    r_metrics: dict[str, float]
    texts: list[str]
    local_scores: torch.Tensor


def sample_rollout(
    s: PolicySetup,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    cfg: Any,
    dist: Any,
    *,
    seed: int,
    timer: common.Timer,
    temperature: float,
    use_reference: bool,
    need_old: bool = True,
) -> GlobalRollout:
    """Generate and score this rank's ``rows`` (seed ``seed + 1_000_003 * rank``; under ZeRO-3
    ``generate`` runs with ``synced_gpus`` until every rank is done), old and reference logprobs
    (no grad), then the global batch on every rank (one process: this batch)."""
    gen_ctx = s.plan.hf_current if s.plan is not None else contextlib.nullcontext
    with gen_ctx():
        rollout, texts, scores, r_metrics = ol.sample_and_score(
            s.policy, tokenizer, rows, cfg, s.reward, seed=dist.sampling_seed(seed),
            timer=timer,
        )  # fmt: skip
    with timer("experience"):
        old_lp, ref_lp, entropy = ol.old_and_reference_logprobs(
            s.policy, s.ref, rollout, temperature=temperature,
            batch_size=cfg.batch.forward_batch_size, use_reference=use_reference,
            need_old=need_old,
        )  # fmt: skip
        glob, g_scores = rollout, scores
        if dist.world_size > 1:  # statistics of the global batch: gather it on every rank
            if entropy is not None:
                entropy = global_entropy(dist, entropy, rollout)
            r_metrics = dist.mean_metrics(r_metrics)  # equal shards: the global means
            glob, g = gather_rollout(
                dist, tokenizer.pad_token_id, rollout,
                {"old": old_lp, "ref": ref_lp, "scores": scores},
            )  # fmt: skip
            old_lp, ref_lp, g_scores = g["old"], g["ref"], g["scores"]
    return GlobalRollout(glob, old_lp, ref_lp, g_scores, entropy, r_metrics, texts, scores)


def resume(cfg: Any, s: PolicySetup, dist: Any) -> dict[str, Any] | None:
    """The state of the latest checkpoint of ``output_dir`` loaded into the policy (model,
    optimiser, schedule; engines: ``infra/dist_checkpoint.py``), if ``--resume``; else None."""
    if not dist.initialized:
        opt, sched = {"policy": s.learner.optimizer}, {"policy": s.learner.scheduler}
        return ol.resume(cfg, {"policy": s.policy}, opt, sched)
    from simple_rlhf.infra.checkpoint import latest_checkpoint
    from simple_rlhf.infra.dist_checkpoint import load_checkpoint

    ckpt = latest_checkpoint(cfg.log.output_dir) if cfg.log.resume else None
    if ckpt is None:
        return None
    return {**load_checkpoint(ckpt, {"policy": s.engine}), "path": str(ckpt)}


def save(cfg: Any, step: int, s: PolicySetup, dist: Any) -> None:
    """A resumable checkpoint of the policy at rollout ``step`` (every rank calls it)."""
    out_dir = cfg.log.output_dir
    if dist.initialized:
        from simple_rlhf.infra.dist_checkpoint import save_checkpoint

        save_checkpoint(out_dir, step, {"policy": s.engine}, {})
        return
    from simple_rlhf.infra.checkpoint import save_checkpoint as save_single

    opt, sched = {"policy": s.learner.optimizer}, {"policy": s.learner.scheduler}
    save_single(out_dir, step, models={"policy": s.policy}, optimizers=opt, schedulers=sched)


def finish(
    cfg: Any, s: PolicySetup, dist: Any, tokenizer: Any, summary: dict, logger: Any, tag: str
) -> dict[str, Any]:
    """Save the policy with ``summary.json`` (several processes: rank 0, gathered under ZeRO-3,
    ``world_size`` added to the summary); close the logger; returns the summary."""
    if not dist.initialized:
        return common.finish_training(s.policy, tokenizer, cfg, summary, logger, tag)
    summary["world_size"] = dist.world_size
    return common.finish_engine_training(s.engine, tokenizer, cfg, summary, logger, tag)
