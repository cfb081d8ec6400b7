"""What the online RL trainers share: PPO (``trainers/ppo.py``) and the critic-free GRPO / RLOO /
REINFORCE++ (``trainers/grpo.py``). Each trainer keeps its own visible loop and composes these:

* set-up: :func:`load_policy` (policy + frozen reference, or ``None`` when the reference is the
  policy with its LoRA adapter disabled), :func:`build_run_reward` (RM and/or functions),
  :func:`load_prompts`, :func:`resume`, config checks (:func:`check_reward_sources`,
  :func:`check_rollout_shape`) and :class:`OnlineMonitorArgs`;
* one rollout: :func:`prompt_stream`, :func:`rollout_rows`, :func:`sample_and_score` (generate,
  decode, score, EOS penalty, clip), :func:`old_and_reference_logprobs`;
* the update: :class:`Learner`, :func:`clip_and_step`, :class:`PolicyLossSpec` and
  :func:`policy_backward` (clipped surrogate + optional entropy bonus / KL-in-loss, accumulated
  over micro-batches so that the step equals one over the whole minibatch);
* reporting: :func:`make_evaluator`, :func:`report_rollout`
  (log, sample pairs, warnings), :func:`finish_summary`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from simple_rlhf.config import ConfigError, fld
from simple_rlhf.data.errors import DataError
from simple_rlhf.data.pipeline import load_encoded
from simple_rlhf.infra.checkpoint import latest_checkpoint, load_checkpoint
from simple_rlhf.infra.engine import guarded_step
from simple_rlhf.infra.guard import NonFiniteGuard
from simple_rlhf.infra.logging import MetricsLogger, format_metrics
from simple_rlhf.losses.kl import kl_penalty
from simple_rlhf.losses.ppo import policy_loss
from simple_rlhf.losses.reduce import aggregate, masked_mean
from simple_rlhf.models.loading import disable_dropout, load_tokenizer
from simple_rlhf.models.lora import check_qlora
from simple_rlhf.rollout import experience as xp
from simple_rlhf.rollout.generate import Rollout, decode_responses, generate
from simple_rlhf.rollout.rewards import (
    CombinedReward,
    RewardFunctionError,
    build_reward,
    call_reward,
    fields_to_columns,
    load_reward_function,
    reward_function_names,
    reward_name,
)
from simple_rlhf.trainers import common

REWARD_FUNCS_HELP = (
    "reward functions: built-in names (tiny_gold, format, length_penalty, math_exact_match), "
    "module:function or file.py:function; the flag with no value (--reward-funcs) gives none "
    "('none' is accepted as an alias)"
)

# --- configuration ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OnlineMonitorArgs:
    """Evaluation and warnings."""

    sample_every: int = fld(10, "print sample prompt/response pairs every N rollouts (0: off)")
    kl_warn: float = fld(10.0, "warn when the KL per response exceeds this")
    entropy_warn: float = fld(0.05, "warn when the mean token entropy falls below this")
    eos_rate_warn: float = fld(0.5, "warn when the EOS rate falls below this")


def check_reward_sources(reward_model: str | None, reward: Any) -> None:
    """At least one reward source, and one weight per source (RM first) if weights are given."""
    funcs = reward_function_names(reward.reward_funcs)
    if not reward_model and not funcs:
        raise ConfigError("no reward: set --reward-model (an RM folder) and/or --reward-funcs")
    for spec in funcs:  # import and check the signature now, before any model is loaded
        try:
            load_reward_function(spec)
        except RewardFunctionError as e:
            raise ConfigError(f"reward_funcs: {e}") from None
    n_sources = bool(reward_model) + len(funcs)
    if reward.reward_weights and len(reward.reward_weights) != n_sources:
        raise ConfigError(
            f"reward_weights: {len(reward.reward_weights)} weights for {n_sources} reward "
            "sources (the RM first, then each function)"
        )


def check_rollout_shape(cfg: Any, prompts: int, responses: int) -> None:
    """The rollout buffer splits into whole minibatches, prompt + response fit ``max_seq_len``,
    and 4-bit (QLoRA) loading only with LoRA adapters (``models/lora.py::check_qlora``)."""
    o = cfg.optim
    rollout = prompts * responses
    mini = o.per_device_train_batch_size * o.gradient_accumulation_steps
    if rollout % mini:
        raise ConfigError(
            f"the rollout batch ({prompts} prompts x {responses} responses = {rollout}) must be a "
            f"multiple of the minibatch (per_device_train_batch_size "
            f"{o.per_device_train_batch_size} x gradient_accumulation_steps "
            f"{o.gradient_accumulation_steps} = {mini})"
        )
    if cfg.data.max_prompt_len + cfg.sampling.max_new_tokens > cfg.data.max_seq_len:
        raise ConfigError(
            f"max_prompt_len ({cfg.data.max_prompt_len}) + max_new_tokens "
            f"({cfg.sampling.max_new_tokens}) exceeds max_seq_len ({cfg.data.max_seq_len})"
        )
    check_qlora(cfg.lora)


# --- set-up ---------------------------------------------------------------------------------------


def load_run_tokenizer(model_args: Any, policy_name: str) -> Any:
    """The tokenizer of ``tokenizer_name_or_path``, else the policy's."""
    return load_tokenizer(
        model_args.tokenizer_name_or_path or policy_name,
        trust_remote_code=model_args.trust_remote_code,
    )


def load_policy(
    name: str, model_args: Any, lora: Any, tokenizer: Any, *, with_reference: bool = True
) -> tuple[Any, Any | None]:
    """``(policy, reference)``: the policy to train (LoRA applied as configured, 4-bit base if
    ``lora.load_in_4bit``) and a frozen full-precision copy of its initial weights; dropout off in
    both (LoRA dropout included: the first pass must see ratio 1).

    The reference is ``None`` when ``with_reference`` is False, or when only the LoRA weights train:
    then it is the policy with the adapter disabled (:func:`~simple_rlhf.rollout.experience.
    reference`), so no second copy is held.
    """
    adapter_only = lora.lora_dim > 0 and lora.only_optimize_lora
    ref = None
    if with_reference and not adapter_only:
        ref = common.load_frozen_lm(name, tokenizer, model_args)
    policy = common.load_trained_lm(model_args, tokenizer, lora, name_or_path=name, dropout=0.0)
    disable_dropout(policy)
    return policy, ref


def build_run_reward(
    reward_model: str | None, reward: Any, model_args: Any, batch_size: int
) -> CombinedReward:
    """The run's reward source; clipping is applied once, after the EOS penalty, by
    :func:`sample_and_score`."""
    return build_reward(
        reward_model,
        reward_function_names(reward.reward_funcs),
        reward.reward_weights,
        normalize=reward.normalize_reward,
        clip=None,
        batch_size=batch_size,
        dtype=model_args.dtype,
        trust_remote_code=model_args.trust_remote_code,
    )


def describe_reward(reward: CombinedReward) -> str:
    """``1*rm + 0.5*tiny_gold``."""
    return " + ".join(f"{w:g}*{n}" for n, w in zip(reward.names, reward.weights, strict=True))


def load_prompts(tokenizer: Any, data: Any) -> tuple[list[dict[str, Any]], Any]:
    """The step-3 share of the prompts (``{prompt_ids, prompt, fields}``) and their stats."""
    prompts, stats = load_encoded(tokenizer, data, "prompt", step=3, split="train")
    if not prompts:
        raise DataError("no prompts left after length filtering: raise --max-prompt-len")
    return prompts, stats


def try_reward_functions(funcs: Sequence[Any], prompts: Sequence[dict[str, Any]]) -> None:
    """Call each reward function once on the first two prompts (with their data columns) and
    empty answers, before any model is loaded: a function that raises or returns the wrong thing
    fails here, in a second, with its name (:class:`RewardFunctionError`)."""
    trial = list(prompts[:2])
    if not trial:
        return
    columns = fields_to_columns([p["fields"] for p in trial])
    for spec in reward_function_names(funcs):
        fn = load_reward_function(spec)
        try:
            call_reward(reward_name(spec), fn, [p["prompt"] for p in trial], [""] * len(trial),
                        **columns)  # fmt: skip
        except RewardFunctionError as e:
            raise RewardFunctionError(
                f"{e} (a trial call before training, on the first {len(trial)} prompts of the "
                f"data with empty answers; data columns passed: {sorted(columns) or 'none'})"
            ) from None


def resume(
    cfg: Any, models: Mapping[str, Any], optimizers: Mapping[str, Any], schedulers: Mapping
) -> dict[str, Any] | None:
    """The state of the latest checkpoint of ``output_dir`` (loaded into the objects), if
    ``--resume`` and there is one; else ``None``."""
    ckpt = latest_checkpoint(cfg.log.output_dir) if cfg.log.resume else None
    if ckpt is None:
        return None
    state = load_checkpoint(ckpt, models=models, optimizers=optimizers, schedulers=schedulers)
    return {**state, "path": str(ckpt)}


# --- one rollout ----------------------------------------------------------------------------------


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


def rollout_rows(batch: Sequence[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Each prompt repeated ``k`` times; the ``k`` samples of a prompt are contiguous rows."""
    return [ex for ex in batch for _ in range(k)]


def sample_and_score(
    policy: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    cfg: Any,
    reward: CombinedReward,
    *,
    seed: int,
    timer: common.Timer,
) -> tuple[Rollout, list[str], torch.Tensor, dict[str, float]]:
    """Generate one response per row (``cfg.sampling``), decode, score: ``(rollout, texts,
    scores [B], reward metrics)``, with ``--missing-eos-penalty`` then ``--reward-clip``; the
    metrics include ``perf/generate_tokens_per_s`` (response tokens over the generate-and-decode
    time, this process's)."""
    start = time.perf_counter()
    with timer("generate"):
        rollout = generate(
            policy, tokenizer, [r["prompt_ids"] for r in rows], cfg.sampling, seed=seed
        )
        texts = decode_responses(tokenizer, rollout)
    gen_tokens_per_s = float(rollout.response_mask.sum()) / max(time.perf_counter() - start, 1e-9)
    with timer("score"):
        scores, metrics = xp.score_responses(
            reward,
            [r["prompt"] for r in rows],
            texts,
            rollout.has_eos,
            fields=fields_to_columns([r["fields"] for r in rows]),
            missing_eos_penalty=cfg.reward.missing_eos_penalty,
            clip=cfg.reward.reward_clip,
        )
    return rollout, texts, scores, {**metrics, "perf/generate_tokens_per_s": gen_tokens_per_s}


def old_and_reference_logprobs(
    policy: Any,
    ref: Any | None,
    rollout: Rollout,
    *,
    temperature: float,
    batch_size: int,
    use_reference: bool = True,
    need_old: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """``(old logprobs [B, R], reference logprobs [B, R], mean token entropy)``, no grad.

    Without ``use_reference`` (KL off) the reference logprobs are the old ones (KL = 0) and the
    reference forward is skipped. Without ``need_old`` (:func:`old_logprobs_needed`; KL off) no
    forward runs at all: both are zeros (KL = 0) and the entropy is ``None`` (the update reports
    it from the training forward).
    """
    if not need_old:
        zeros = torch.zeros(rollout.response_ids.shape, device=rollout.response_ids.device)
        return zeros, zeros, None
    old_lp, entropy = xp.compute_logprobs(
        policy, rollout, temperature=temperature, batch_size=batch_size, with_entropy=True
    )
    ref_lp = old_lp
    if use_reference:
        with xp.reference(policy, ref) as ref_model:
            ref_lp, _ = xp.compute_logprobs(
                ref_model, rollout, temperature=temperature, batch_size=batch_size
            )
    return old_lp, ref_lp, float(masked_mean(entropy, rollout.response_mask))


# --- the update -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Learner:
    """A trainable model with its optimiser and schedule. With an ``engine``
    (``infra/engine.py::Engine``; ``model`` is then ``engine.model``, the DDP / DeepSpeed
    wrapper that every training forward must go through) the micro-batches, backward and step
    run through it, across ranks."""

    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    max_grad_norm: float
    engine: Any = None
    # no update on a NaN/inf gradient, a diverged run stops (with an engine: the engine's guard)
    guard: NonFiniteGuard = dataclasses.field(default_factory=NonFiniteGuard)

    def accumulate(self, micro_batches: Sequence[Any]) -> Iterator[Any]:
        """The micro-batches of one optimiser step (DDP no_sync / DeepSpeed boundaries)."""
        if self.engine is None:
            return iter(micro_batches)
        return self.engine.accumulate(micro_batches)

    def backward(self, loss: torch.Tensor) -> None:
        if self.engine is None:
            loss.backward()
        else:
            self.engine.backward(loss)

    def step(self) -> float:
        """Clip, step, schedule, zero grads; the gradient norm before clipping (global)."""
        return clip_and_step(self) if self.engine is None else self.engine.step()


def clip_and_step(learner: Learner) -> float:
    """Clip the gradient norm, step the optimiser (unless the norm is NaN/inf) and the schedule,
    zero the grads; the norm."""
    return guarded_step(
        learner.model, learner.optimizer, learner.scheduler, learner.max_grad_norm, learner.guard
    )


def accumulate(acc: dict[str, float], metrics: Mapping[str, Any], weight: float = 1.0) -> None:
    """``acc[k] += weight * metrics[k]`` for every metric."""
    for k, v in metrics.items():
        acc[k] = acc.get(k, 0.0) + weight * float(v)


@dataclasses.dataclass(frozen=True)
class PolicyLossSpec:
    """The policy loss of one minibatch:
    ``aggregate(l_clip) - entropy_coef * aggregate(H) + kl_coef * aggregate(KL_est(pi || ref))``
    (``kl_coef = 0``: no KL term), over the response mask (minus truncated rows if
    ``mask_truncated``), reduced by ``aggregation`` (``agg_constant`` for the constant
    normaliser of ``seq_mean_token_sum_norm``)."""

    aggregation: str
    clip_low: float
    clip_high: float
    dual_clip: float | None = None
    agg_constant: float | None = None
    entropy_coef: float = 0.0
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    mask_truncated: bool = False
    # the rollout's "old" logprobs were not computed (see :func:`old_logprobs_needed`): the
    # ratio's denominator is the training forward's own logprobs, detached, and the token-mean
    # entropy is reported from that forward (``policy/entropy``)
    old_from_current: bool = False


def old_logprobs_needed(
    num_iterations: int, buffer: int, minibatch: int, use_reference: bool
) -> bool:
    """Whether a rollout needs its own no-grad "old" logprob forward. Not when one optimiser step
    consumes the whole buffer (one pass, one minibatch) with no reference KL: the policy is then
    unchanged between sampling and that step and dropout is off (:func:`load_policy`), so the
    old logprobs equal the training forward's (ratio 1) and the KL needs no old values."""
    return num_iterations > 1 or buffer > minibatch or use_reference


def loss_mask(exp: xp.Experience, mask_truncated: bool) -> torch.Tensor:
    """``[B, R]`` tokens that enter the loss: the response mask, minus truncated rows if asked."""
    mask = exp.mask
    if mask_truncated:
        mask = mask * exp.rollout.has_eos.to(mask.dtype)[:, None]
    return mask


def policy_backward(
    model: Any,
    mb: xp.Experience,
    micro_size: int,
    spec: PolicyLossSpec,
    *,
    temperature: float,
    learner: Learner | None = None,
    norm_mb: xp.Experience | None = None,
    scale: float = 1.0,
    extra_loss: Callable[[int], tuple[torch.Tensor, dict[str, float]]] | None = None,
) -> dict[str, float]:
    """Backward of the minibatch ``mb``'s policy loss, in micro-batches of ``micro_size`` rows.

    Micro-batch ``j``'s loss is weighted by ``w_j = xp.micro_batch_weight(aggregation, mask_j,
    mask_norm)`` so that ``sum_j w_j loss_j`` equals the loss of the whole minibatch for every
    aggregation (batch 8 x accumulation 1 == batch 2 x accumulation 4). Returns the ``w``-weighted
    metric sums; the caller steps the optimiser.

    Several ranks: ``mb`` is this rank's slice of the global minibatch ``norm_mb`` (the weights
    are relative to it) and the backward is of ``scale * w_j * loss_j`` with ``scale`` = world
    size (the engine averages gradients over ranks), through ``learner`` (its micro-batch
    boundaries and backward); ``extra_loss(j)`` (e.g. PPO-ptx) is added to micro-batch ``j``'s
    loss before that backward, so each micro-batch has exactly one backward.
    """
    agg, acc = spec.aggregation, {}
    mb_mask = loss_mask(norm_mb if norm_mb is not None else mb, spec.mask_truncated)
    micros = [
        mb.index(range(s, min(s + micro_size, len(mb)))) for s in range(0, len(mb), micro_size)
    ]
    steps = learner.accumulate(micros) if learner is not None else iter(micros)
    for j, micro in enumerate(steps):
        mask = loss_mask(micro, spec.mask_truncated)
        w = xp.micro_batch_weight(agg, mask, mb_mask)
        want_entropy = spec.entropy_coef > 0 or spec.old_from_current
        logprobs, entropy = xp.policy_logprobs(
            model, micro.rollout, temperature=temperature, with_entropy=want_entropy
        )
        old = logprobs.detach() if spec.old_from_current else micro.old_logprobs
        loss, m = policy_loss(
            logprobs,
            old,
            micro.advantages,
            mask,
            clip_low=spec.clip_low,
            clip_high=spec.clip_high,
            dual_clip=spec.dual_clip,
            aggregation=agg,
            agg_constant=spec.agg_constant,
        )
        if spec.old_from_current:  # the token mean over the global minibatch's responses
            tokens = (norm_mb if norm_mb is not None else mb).rollout.response_mask.sum()
            h = (entropy.detach() * micro.rollout.response_mask).sum() / tokens.clamp(min=1)
            accumulate(acc, {"policy/entropy": h})
        if entropy is not None and spec.entropy_coef > 0:
            ent = aggregate(entropy, mask, agg, spec.agg_constant)
            loss = loss - spec.entropy_coef * ent
            m["policy/entropy_loss"] = ent.detach()
        if spec.kl_coef > 0:
            kl = kl_penalty(logprobs, micro.ref_logprobs, spec.kl_estimator)
            kl_term = aggregate(kl, mask, agg, spec.agg_constant)
            loss = loss + spec.kl_coef * kl_term
            m["policy/kl_loss"] = kl_term.detach()
        total = loss * w * scale if scale != 1.0 else loss * w
        if extra_loss is not None:
            extra, extra_metrics = extra_loss(j)
            total = total + extra
            accumulate(acc, extra_metrics)
        if learner is not None:
            learner.backward(total)
        else:
            total.backward()
        m.pop("policy/ratio_max", None)
        accumulate(acc, m, w)
    return acc


# --- reporting ------------------------------------------------------------------------------------


def make_evaluator(
    tag: str, model: Any, tokenizer: Any, reward: Any, cfg: Any, logger: MetricsLogger
) -> Callable[[str, int], dict[str, float]]:
    """``evaluate(when, step)``: held-out prompts answered greedily and sampled (one generation
    per kind serves every score), scored by the evaluation reward functions (default: the run's
    own, ``rollout/heldout.py``) and by the run's ``reward`` (``eval/reward_*``); logged at
    ``step`` and printed. ``{}`` when there are no held-out prompts."""
    heldout = common.heldout_evaluator(
        cfg,
        tokenizer,
        run_reward_funcs=reward_function_names(cfg.reward.reward_funcs),
        run_reward=reward,
        max_new_tokens=cfg.sampling.max_new_tokens,
    )
    logger.print(f"[{tag}] {heldout.describe()}")

    def evaluate(when: str, step: int) -> dict[str, float]:
        if not heldout:
            return {}
        ev = heldout(model, tokenizer, log=logger.print)
        ev.update(heldout(model, tokenizer, sampling=cfg.sampling))
        logger.log(ev, step)
        logger.print(f"[{tag}] eval ({when}, rollout {step}): {format_metrics(ev)}")
        return ev

    return evaluate


def reward_model_preflight(
    policy: Any, tokenizer: Any, reward: CombinedReward, cfg: Any, logger: MetricsLogger, tag: str
) -> dict[str, float]:
    """Before training: how well the run's reward model orders the policy's own sampled answers
    to held-out prompts, by the evaluation reward functions (``preflight/policy_pairs_accuracy``),
    with a warning when near chance (then the policy has nothing to climb). ``{}`` without a
    reward model or an evaluation reward function."""
    from simple_rlhf.rollout.heldout import near_chance_warning, policy_pair_accuracy

    rm = dict(zip(reward.names, reward.sources, strict=True)).get("rm")
    if rm is None:
        return {}
    heldout = common.heldout_evaluator(
        cfg,
        tokenizer,
        run_reward_funcs=reward_function_names(cfg.reward.reward_funcs),
        max_new_tokens=cfg.sampling.max_new_tokens,
    )
    if not heldout or not heldout.functions:
        return {}
    metrics = policy_pair_accuracy(
        heldout, policy, tokenizer, rm, sampling=cfg.sampling, seed=cfg.optim.seed,
        prefix="preflight",
    )  # fmt: skip
    acc = metrics.get("preflight/policy_pairs_accuracy")
    logger.print(
        f"[{tag}] pre-flight: the reward model orders {int(metrics['preflight/policy_pairs'])} "
        "pairs of the policy's own sampled answers (by "
        f"{', '.join(n for n, _ in heldout.functions)}) with accuracy "
        + (f"{acc:.3f}" if acc is not None else "n/a")
    )
    if warning := near_chance_warning(metrics, "preflight"):
        logger.print(f"[{tag}] warning: {warning}")
    return metrics


def preflight_notes(tokenizer: Any, prompts: Sequence[dict[str, Any]]) -> list[str]:
    """Problems visible before any rollout: plain-string prompts for a model whose tokenizer has a
    chat template but no stored prompt format (trained elsewhere: it may expect chat messages)."""
    from simple_rlhf.data.prompt_format import get_format

    notes = []
    plain = sum(isinstance(p["prompt"], str) for p in prompts)
    template = getattr(tokenizer, "chat_template", None)
    if plain and get_format(tokenizer) is None and template:
        notes.append(
            f"{plain} of {len(prompts)} prompts are plain strings, sent to the model as they are; "
            "its tokenizer has a chat template but no stored prompt format (it was not trained "
            "with simple-rlhf sft). If it was trained on chat messages, give the prompts as "
            '[{"role": "user", "content": ...}] lists, or every answer may score the same'
        )
    return notes


def signal_note(scores: torch.Tensor, group_size: int) -> str | None:
    """After the first rollout: a line naming a zero-signal situation (every response scored the
    same; every prompt's group scored equal), or ``None`` when there is signal."""
    flat = scores.flatten().float()
    if flat.numel() == 0:
        return None
    lo, hi = float(flat.min()), float(flat.max())
    if hi - lo < 1e-9:
        return (
            f"every sampled response of this rollout got the same reward {lo:.4g}: the reward "
            "does not tell the answers apart, so there is no learning signal. Check the reward "
            "function on the sample answers printed below; if they look right but score "
            "nothing, the model may be prompted differently from how it was trained (chat "
            "messages vs plain strings, see the prompt format line above), or its answers may "
            "be cut by --max-new-tokens"
        )
    if group_size > 1:
        groups = flat.view(-1, group_size)
        equal = float(((groups.max(1).values - groups.min(1).values) < 1e-9).float().mean())
        if equal >= 0.999:
            return (
                f"all groups of {group_size} answers to one prompt scored equal (rewards range "
                f"{lo:.3g}..{hi:.3g} across prompts): group-relative advantages are all 0. Raise "
                "--temperature or --num-generations, or use --dynamic-sampling"
            )
    return None


def show_samples(
    logger: MetricsLogger, prompts: Sequence[Any], texts: Sequence[str], scores: torch.Tensor, n=2
) -> None:
    """Print the first ``n`` prompt -> response pairs of a rollout with their scores."""
    from simple_rlhf.data.tiny_task import prompt_text

    for i in range(min(n, len(texts))):
        logger.print(
            f"  [sample] {prompt_text(prompts[i])!r} -> {texts[i]!r} (score {float(scores[i]):.3f})"
        )


def monitor_warnings(monitor: OnlineMonitorArgs, metrics: Mapping[str, float]) -> list[str]:
    """Warnings for a KL past ``kl_warn``, an entropy collapse, or a falling EOS rate."""
    out = []
    if metrics.get("objective/kl", 0.0) > monitor.kl_warn:
        out.append(
            f"KL per response {metrics['objective/kl']:.2f} > {monitor.kl_warn}: "
            "raise --kl-coef or lower the learning rate"
        )
    if "policy/entropy" in metrics and metrics["policy/entropy"] < monitor.entropy_warn:
        out.append(
            f"entropy {metrics['policy/entropy']:.3f} < {monitor.entropy_warn}: the policy "
            "is collapsing"
        )
    if metrics.get("rollout/eos_rate", 1.0) < monitor.eos_rate_warn:
        out.append(
            f"EOS rate {metrics['rollout/eos_rate']:.2f} < {monitor.eos_rate_warn}: responses "
            "run to max_new_tokens (consider --missing-eos-penalty)"
        )
    return out


def report_rollout(
    cfg: Any,
    logger: MetricsLogger,
    tag: str,
    step: int,
    last_step: int,
    metrics: Mapping[str, float],
    shown: Sequence[str],
    sample: tuple[Sequence[dict[str, Any]], Sequence[str], torch.Tensor],
) -> None:
    """After rollout ``step``: progress bar, metrics every ``logging_steps`` (and at the end),
    sample pairs every ``sample_every`` (and at the first), then the monitor's warnings."""
    postfix = {k: metrics[f] for k, f in (("score", "reward/score_mean"), ("kl", "objective/kl"))}
    logger.progress(1, postfix)
    if step % cfg.log.logging_steps == 0 or step == last_step:
        logger.log(metrics, step)
    if cfg.monitor.sample_every and (step % cfg.monitor.sample_every == 0 or step == 1):
        rows, texts, scores = sample
        logger.print(f"[{tag}] rollout {step}: " + format_metrics(metrics, shown))
        show_samples(logger, [r["prompt"] for r in rows], texts, scores)
    for w in monitor_warnings(cfg.monitor, metrics):
        logger.print(f"[{tag}] warning (rollout {step}): {w}")


def policy_saver(cfg: Any, policy: Any, engine: Any, tokenizer: Any) -> Callable[[Any], None]:
    """``save(folder)`` of the policy as an HF folder: the plain module alone, the engine's
    (rank 0, gathered under ZeRO-3; every rank calls it) with several processes."""
    from simple_rlhf.infra.checkpoint import save_hf_model

    merge = cfg.lora.merge_lora
    if engine is not None:
        return lambda folder: engine.save_hf(tokenizer, folder, merge_lora=merge)
    return lambda folder: save_hf_model(policy, tokenizer, folder, merge_lora=merge)


def finish_summary(
    summary: dict[str, Any],
    evaluate: Callable[[str, int], dict[str, float]],
    step: int,
    last_eval: int,
    metrics: Mapping[str, float],
    shown: Sequence[str],
) -> dict[str, Any]:
    """``after`` (a final evaluation unless the last rollout was just evaluated), the last
    rollout's shown metrics and the rollout count."""
    summary["after"] = evaluate("final", step) if last_eval != step else summary[f"rollout_{step}"]
    summary["last_rollout"] = {k: metrics[k] for k in shown if k in metrics}
    summary["rollouts"] = step
    return summary
