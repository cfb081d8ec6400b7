"""Step 2: reward model (RM) training on preference pairs (prompt, chosen, rejected).

Two kinds (``--kind``; the folder's ``config.json`` says which, ``models/reward.py``):

- ``likelihood`` (default): a causal LM (from the SFT model) whose score is its summed
  log-probability of the response, ``r(x, y) = sum_t log pi(y_t | x, y_<t)`` (CPO's
  reference-free implicit reward), trained with CPO's loss at beta 1: Bradley–Terry on those sums
  plus ``--nll-coef`` x the chosen answers' token-mean NLL. The score starts from what the SFT
  model knows: on the generalization suite's tasks the SFT model's own likelihood orders its
  sampled answers 0.77 / 0.87 / 0.66 of the time where a scalar head trained on ~1,000 noisy pairs
  reached 0.54 / 0.74 / 0.75; trained, the likelihood RM reached 0.76 / 0.81 / 0.74 (seed 1234;
  3 seeds in benchmarks/generalization_results.md) and 0.936 on the tiny task (scalar 0.894).
  Defaults: lr 1e-4, one epoch (a few seconds on 1,000 pairs).
- ``value``: an ``AutoModelForSequenceClassification`` (``num_labels=1``), DeepSpeed-Chat's and
  TRL's RM, built on any HF backbone (the tiny base, the SFT model, or a smaller model beside the
  actor); its score is the scalar head read at the last real token (the EOS every response ends
  with), for any padding side (``models/reward.py::sequence_scores``). A new head is drawn from its
  own seeded generator. Train it at ``--learning-rate 1e-3 --num-train-epochs 6`` on the tiny
  task (configs/tiny/reward.value.yaml). Its loss is chosen by name (``--loss-type``):

  - ``pairwise`` (default): Bradley–Terry ``-log σ(r_c - r_r - m) + c · (r_c + r_r)²`` per pair,
    averaged over the pairs of the optimiser step (``--margin`` m, ``--center-coef`` c; also for
    the likelihood kind);
  - ``dschat``: DeepSpeed-Chat's token-wise loss from the first differing token to the end;
  - ``mixed``: ``pairwise + λ · dschat`` on the same per-token values (``--token-loss-coef`` λ).

Chosen and rejected go through one forward pass (``[2B, T]``, chosen rows first) called on the
DDP / DeepSpeed wrapper. Pairs come from step 2 of the ``--data-split``; too-long pairs are
dropped (or truncated, ``--truncation``) and counted. Evaluation before training, after each epoch
and every ``--eval-steps`` on the held-out pairs (all, or ``--eval-batches``; split over the ranks
and gathered): pairwise accuracy (ties count as wrong), mean chosen / rejected score, margin, loss;
on the tiny task also the Spearman correlation of the scores with the gold reward over every
held-out response and the accuracy against the noise-free gold order.

After training the mean and std of the raw scores on a reference set (held-out chosen responses by
default, ``--stats-reference``) go to ``reward_stats.json`` beside the model; ``RewardScorer``
applies them (``(r - mean) / std``) when step 3 scores rollouts.

The value kind on one CPU, tiny task, from the SFT model (6 epochs of 250 steps of 16 pairs; 4-20
minutes with one thread depending on the machine's load). Measured on the 200 held-out pairs (29
labels flipped, so 0.855 is the accuracy ceiling; benchmarks/reward_results.md), seeds 1234 / 2::

    loss      accuracy       gold-order accuracy  Spearman(score, gold)
    pairwise  0.835 / 0.795  0.94 / 0.89          0.59 / 0.47  (default)
    mixed     0.805 / 0.83   0.94 / 0.935         0.72 / 0.48
    dschat    0.79 / 0.815   0.905 / 0.95         0.74 / 0.60

Labels only order answers to the *same* prompt, so nothing in them fixes how the scores of
different prompts line up: within 1-, 2-, 3-thing prompts the pairwise RM's Spearman is 0.90 /
0.83 / 0.75, but its mean score rises with the number of things asked (-1.7 / -0.9 / -0.1) while
the mean gold reward falls (0.72 / 0.55 / 0.54), hence 0.59 over all responses (a perfect
within-pair ranking with no cross-prompt information scores 0.62 on this set). How the prompts
line up is left to the network's inductive bias, so it changes with the seed (mixed: 0.72 vs
0.48); the token-wise term helps on average (two-seed means 0.53 / 0.60 / 0.67) but no loss
reaches 0.7 with both seeds. Accuracy 0.85 against the noisy labels needs ~0.99 against the gold
order (at most one net disagreement); every run ends at 0.89-0.95. The default run::

    simple-rlhf reward --model-name-or-path outputs/sft --output-dir outputs/reward

A real backbone, LoRA (the head stays fully trainable; ``--load-in-4bit`` for QLoRA)::

    simple-rlhf reward --model-name-or-path facebook/opt-350m --data-path Dahoas/rm-static \\
        --lora-dim 64 --learning-rate 5e-5 --per-device-train-batch-size 8 --output-dir outputs/rm

Several GPUs (or CPU processes over gloo): the same command under a launcher, plain DDP or
DeepSpeed ZeRO 0-3 (``--zero-stage``, ``--offload``); each rank takes a disjoint slice of every
global batch of ``per_device_train_batch_size x N`` pairs and the loss is weighted by the pairs of
the global step, so N ranks x batch B equal one process with batch N x B (tested with 2 processes:
DDP, ZeRO-2, ZeRO-3 + offload, resumed; QLoRA at ZeRO-3: the 4-bit backbone is gathered for the
save, the head ``score`` stays full precision and trainable, ``tests/infra/test_distributed.py``)::

    torchrun --nproc_per_node 8 -m simple_rlhf reward --zero-stage 2 --dtype bfloat16 ...
    deepspeed --num_gpus 8 --module simple_rlhf reward --zero-stage 3 --offload all ...
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from simple_rlhf.config import (
    ConfigError,
    DataArgs,
    DistArgs,
    HeldoutArgs,
    LogArgs,
    LoraArgs,
    ModelArgs,
    OptimArgs,
    fld,
    section,
)
from simple_rlhf.data.errors import DataError
from simple_rlhf.data.pipeline import load_encoded
from simple_rlhf.infra.checkpoint import latest_checkpoint
from simple_rlhf.infra.dist_checkpoint import load_checkpoint, save_checkpoint
from simple_rlhf.infra.distributed import init_distributed
from simple_rlhf.infra.logging import format_metrics
from simple_rlhf.infra.seed import set_seed
from simple_rlhf.losses.reward import (
    REWARD_LOSS_NAMES,
)
from simple_rlhf.models.loading import load_causal_lm, load_tokenizer
from simple_rlhf.models.lora import apply_lora, check_qlora
from simple_rlhf.models.reward import (
    KIND_ATTR,
    REWARD_KINDS,
    STATS_FILE,
    load_reward_model,
)
from simple_rlhf.trainers import common
from simple_rlhf.trainers.reward_eval import (
    gold_metrics,
    gold_rewards,
    pair_eval_metrics,
    reference_stats,
    score_examples,
)
from simple_rlhf.trainers.reward_step import (  # noqa: F401 - re-exported for callers and tests
    OBJECTIVES,
    backward_step,
    likelihood_objective,
)

LOSS_TYPES = (*REWARD_LOSS_NAMES, "mixed")
STATS_REFERENCES = ("eval_chosen", "eval_all", "train_chosen")
TRAIN_REFERENCE_CAP = 1024  # responses scored for the stats when the reference is the train split


@dataclasses.dataclass(frozen=True)
class RewardArgs:
    """Reward-model loss, evaluation and score normalisation."""

    kind: str = fld(
        "likelihood",
        "'likelihood': a causal LM scoring a response by its summed log-probability, trained with "
        "CPO's loss (Bradley–Terry on those sums + nll_coef x the chosen answers' NLL); saved as "
        "a causal LM with reward_kind in config.json. 'value': a scalar head read at the EOS "
        "(AutoModelForSequenceClassification, DeepSpeed-Chat/TRL; tiny recipe: --learning-rate "
        "1e-3 --num-train-epochs 6)",
    )
    nll_coef: float = fld(
        1.0, "likelihood kind: weight of the chosen answers' token-mean NLL (keeps it a good LM)"
    )
    loss_type: str = fld(
        "pairwise",
        "loss: 'pairwise' (Bradley–Terry at the EOS), 'dschat' (DeepSpeed-Chat's token-wise "
        "loss) or 'mixed' (pairwise + token_loss_coef x dschat)",
    )
    margin: float = fld(0.0, "pairwise/mixed: required score gap m in -log σ(r_c - r_r - m)")
    center_coef: float = fld(
        0.0, "pairwise/mixed: reward-centering coefficient c, adds c · mean((r_c + r_r)^2)"
    )
    token_loss_coef: float = fld(1.0, "mixed only: weight λ of the token-wise (dschat) term")
    eval_batches: int | None = fld(
        None, "evaluate on at most this many held-out batches (None: all held-out pairs)"
    )
    gold_eval: bool = fld(
        True, "tiny task: also report Spearman(RM score, gold reward) on held-out responses"
    )
    policy_check_samples: int = fld(
        4,
        "after training: answers sampled per held-out prompt from the policy (the SFT model) to "
        "measure how well the RM orders the policy's own answers, by --eval-reward-funcs "
        "(0 or 1: off)",
    )
    policy_model: str | None = fld(
        None, "the policy whose answers are checked (default: --model-name-or-path)"
    )
    stats_reference: str = fld(
        "eval_chosen",
        "responses whose raw scores give the stored mean/std: eval_chosen, eval_all "
        "(chosen + rejected) or train_chosen",
    )

    def __post_init__(self) -> None:
        if self.kind not in REWARD_KINDS:
            raise ConfigError(f"kind: {self.kind!r} is not one of {', '.join(REWARD_KINDS)}")
        if self.kind == "likelihood" and self.loss_type != "pairwise":
            raise ConfigError(
                f"loss_type {self.loss_type!r} reads per-token values of a scalar head: "
                "use it with --kind value"
            )
        if self.nll_coef < 0:
            raise ConfigError("nll_coef: must be >= 0")
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(
                f"loss_type: {self.loss_type!r} is not one of {', '.join(LOSS_TYPES)}"
            )
        if self.loss_type == "dschat" and (self.margin or self.center_coef):
            raise ConfigError("margin and center_coef apply to loss_type 'pairwise'/'mixed' only")
        if self.token_loss_coef < 0:
            raise ConfigError("token_loss_coef: must be >= 0")
        if self.stats_reference not in STATS_REFERENCES:
            raise ConfigError(
                f"stats_reference: {self.stats_reference!r} is not one of "
                f"{', '.join(STATS_REFERENCES)}"
            )
        if self.eval_batches is not None and self.eval_batches < 1:
            raise ConfigError("eval_batches: must be >= 1 (or None for all)")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Reward model training (step 2)."""

    model: ModelArgs = section(ModelArgs)
    data: DataArgs = section(DataArgs)
    optim: OptimArgs = section(
        lambda: OptimArgs(
            learning_rate=1e-4,
            num_train_epochs=1,
            per_device_train_batch_size=16,
            per_device_eval_batch_size=32,
            weight_decay=0.0,
        )
    )
    lora: LoraArgs = section(LoraArgs)
    log: LogArgs = section(lambda: LogArgs(output_dir="outputs/reward"))
    reward: RewardArgs = section(RewardArgs)
    heldout: HeldoutArgs = section(lambda: HeldoutArgs(gold_eval_prompts=48))
    dist: DistArgs = section(DistArgs)


# ---- training ------------------------------------------------------------------------------------


def policy_check(
    cfg: RewardConfig, engine: Any, tokenizer: Any, logger: Any, step: int
) -> dict[str, float]:
    """The trained RM's accuracy on pairs of the policy's own sampled answers, ordered by the
    evaluation reward functions (``rollout/heldout.py::policy_pair_accuracy``), with a warning
    when it is near chance; ``{}`` when off or without a reward function."""
    from simple_rlhf.models.reward import RewardScorer
    from simple_rlhf.rollout.heldout import near_chance_warning, policy_pair_accuracy

    ra = cfg.reward
    heldout = common.heldout_evaluator(cfg, tokenizer)
    if ra.policy_check_samples < 2 or not heldout:
        return {}
    if not heldout.functions:
        logger.print(
            "[reward] the RM's accuracy on the policy's own answers is not measured: pass "
            "--eval-reward-funcs file.py:function to order them"
        )
        return {}
    policy_path = ra.policy_model or cfg.model.model_name_or_path

    # the policy is a plain whole model on each rank that samples (not partitioned by ZeRO-3)
    plain = engine.dist.plan(cfg.optim, cfg.model.dtype, zero_stage=None).hf_current

    def check(rm: Any) -> dict[str, float]:
        was_training = rm.training
        with plain():
            policy = common.load_frozen_lm(policy_path, tokenizer, cfg.model)
            scorer = RewardScorer(rm, tokenizer, normalize=False)
            try:
                return policy_pair_accuracy(
                    heldout, policy, tokenizer, scorer.score, samples=ra.policy_check_samples,
                    seed=cfg.optim.seed,
                )  # fmt: skip
            finally:
                rm.train(was_training)

    metrics = engine.on_main(check)
    logger.log(metrics, step)
    acc = metrics.get("eval/policy_pairs_accuracy")
    logger.print(
        f"[reward] on {int(metrics.get('eval/policy_pairs', 0))} pairs of the policy's own "
        f"sampled answers ({len(heldout.prompts)} held-out prompts x {ra.policy_check_samples}, "
        f"ordered by {', '.join(n for n, _ in heldout.functions)}): accuracy "
        + (f"{acc:.3f}" if acc is not None else "n/a")
    )
    if warning := near_chance_warning(metrics):
        logger.print(f"[reward] warning: {warning}")
    return metrics


def run(cfg: RewardConfig) -> dict[str, Any]:
    """Train, evaluate, compute normalisation stats and save; returns the summary."""
    # ---- setup ----
    dist = init_distributed(cfg.dist)  # one process: no process group, nothing changes
    set_seed(cfg.optim.seed)  # the same on every rank: head and LoRA initialisation agree
    out_dir, ra, o = cfg.log.output_dir, cfg.reward, cfg.optim
    with dist.main_first():  # the node's main rank builds the tiny model / data cache first
        tokenizer = load_tokenizer(
            cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
            trust_remote_code=cfg.model.trust_remote_code,
        )
        train, train_stats = load_encoded(tokenizer, cfg.data, "pair", step=2, split="train")
        evals, eval_stats = load_encoded(tokenizer, cfg.data, "pair", step=2, split="eval")
    if not train:
        raise DataError("no training pairs left after length filtering: raise --max-seq-len")
    plan = dist.plan(o, cfg.model.dtype)  # before loading: ZeRO-3 partitions at load
    check_qlora(cfg.lora, plan.zero_stage, zero3_ok=True)  # QLoRA: LoRA on
    m = cfg.model
    load: dict[str, Any] = {
        "dtype": m.dtype,
        "dropout": m.dropout,
        "trust_remote_code": m.trust_remote_code,
        "gradient_checkpointing": m.gradient_checkpointing,
        "load_in_4bit": cfg.lora.load_in_4bit,
    }
    with plan.loading():
        if ra.kind == "likelihood":
            model = load_causal_lm(m.model_name_or_path, tokenizer, **load)
            setattr(model.config, KIND_ATTR, "likelihood")  # saved in config.json: how to score
        else:  # a new head is the same under any loading (ZeRO-3 included)
            model = load_reward_model(m.model_name_or_path, tokenizer, head_seed=o.seed, **load)
    if ra.kind == "likelihood":
        model = apply_lora(model, cfg.lora, task_type="CAUSAL_LM")
    else:
        model = apply_lora(model, cfg.lora, task_type="SEQ_CLS", extra_trainable=["score"])
    total_steps = common.total_training_steps(o, len(train), dist.world_size)
    optimizer = common.build_optimizer(model, o, cfg.lora)
    scheduler = common.build_scheduler(optimizer, o, total_steps)
    engine = plan.wrap(model, optimizer, scheduler, allow_4bit=True)  # plain / DDP / DeepSpeed
    if dist.world_size > 1:
        set_seed(dist.rank_seed(o.seed))  # dropout differs per rank
    logger = common.start_logger(cfg, dist, total_steps)  # writes on rank 0 only
    global_pairs = o.per_device_train_batch_size * dist.world_size * o.gradient_accumulation_steps
    logger.print(
        f"[reward] {engine.describe()}\n[reward] {ra.kind} RM, loss {ra.loss_type}; train pairs: "
        f"{train_stats.describe()}; eval pairs: {eval_stats.describe()}; {total_steps} "
        f"optimiser steps of {global_pairs} pairs"
    )
    step, epoch, skip = 0, 0, 0
    ckpt = latest_checkpoint(out_dir) if cfg.log.resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, {"model": engine})
        step, epoch, skip = state["step"], state["epoch"], state["micro_in_epoch"]
        logger.print(f"[reward] resumed from {ckpt} at step {step}")

    pad_id = tokenizer.pad_token_id
    bs, eval_bs = o.per_device_train_batch_size, o.per_device_eval_batch_size
    summary: dict[str, Any] = {
        "train_examples": len(train),
        "train_dropped": train_stats.dropped,
        "train_truncated": train_stats.truncated,
        "eval_examples": len(evals),
        "eval_dropped": eval_stats.dropped,
        "loss_type": ra.loss_type,
        "kind": ra.kind,
    }
    gold = gold_rewards(tokenizer, evals) if ra.gold_eval and evals else None

    def evaluate(tag: str) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if evals:
            chosen, rejected = score_examples(
                engine.module, evals, eval_bs, pad_id, ra.eval_batches, dist
            )
            metrics = pair_eval_metrics(chosen, rejected)
            if gold is not None:
                metrics.update(gold_metrics(chosen, rejected, gold))
        logger.log(metrics, step)
        logger.print(f"[reward] eval ({tag}, step {step}): {format_metrics(metrics)}")
        return metrics

    if step == 0:
        summary["before"] = common.remember_before(cfg, evaluate("before training"))
    common.recall_before(cfg, summary)  # a resumed run: the metrics before training, as measured

    # ---- train loop ----
    engine.train()
    t_start, tokens_seen, pairs_seen, last_eval = time.perf_counter(), 0, 0, -1
    while step < total_steps:
        micro = common.rank_batches(train, bs, dist, shuffle=True, seed=o.seed + epoch)
        accum = o.gradient_accumulation_steps
        groups = [micro[i : i + accum] for i in range(0, len(micro), accum)]
        for gi in range(skip, len(groups)):
            loss_sum, stats_sum, n_tokens = backward_step(
                engine.model, groups[gi], pad_id, ra, engine, dist
            )
            norm = engine.step()
            step += 1
            tokens_seen += n_tokens
            (step_pairs,) = dist.all_reduce_sum([sum(len(c) for c in groups[gi])])
            pairs_seen += int(step_pairs)
            logger.progress(1, {"loss": loss_sum, "acc": stats_sum.get("accuracy", 0.0)})
            if step % cfg.log.logging_steps == 0 or step == total_steps:
                elapsed = time.perf_counter() - t_start
                logger.log(
                    {
                        "train/loss": loss_sum,
                        **{f"train/{k}": v for k, v in stats_sum.items()},
                        "train/lr": engine.lr,
                        "train/grad_norm": norm,
                        "train/epoch": epoch + (gi + 1) / len(groups),
                        "perf/tokens_per_s": tokens_seen / elapsed,
                        "perf/pairs_per_s": pairs_seen / elapsed,
                    },
                    step,
                )
            if cfg.log.eval_steps and step % cfg.log.eval_steps == 0:
                summary[f"step_{step}"] = evaluate("periodic")
                last_eval = step
            if cfg.log.save_steps and step % cfg.log.save_steps == 0:
                position = {"epoch": epoch, "micro_in_epoch": gi + 1}
                save_checkpoint(out_dir, step, {"model": engine}, position)
            if step >= total_steps:
                break
        else:  # a whole epoch done
            epoch, skip = epoch + 1, 0
            done = last_eval == step  # the periodic evaluation just ran
            summary[f"epoch_{epoch}"] = (
                summary[f"step_{step}"] if done else evaluate(f"epoch {epoch}")
            )
            last_eval = step

    # ---- normalisation stats and save ----
    elapsed = time.perf_counter() - t_start
    evaluated = [k for k in summary if k == "before" or k.startswith(("step_", "epoch_"))]
    summary["after"] = evaluate("final") if last_eval != step else summary[evaluated[-1]]
    summary["after"] = {**summary["after"], **policy_check(cfg, engine, tokenizer, logger, step)}
    which = ra.stats_reference if evals else "train_chosen"
    ref = evals if which != "train_chosen" else train[:TRAIN_REFERENCE_CAP]
    stats = reference_stats(engine.module, ref, which, eval_bs, pad_id, dist)
    logger.print(
        f"[reward] score stats on {stats['n']} {which} responses: mean {stats['mean']:.4g}, "
        f"std {stats['std']:.4g} (written to {STATS_FILE})"
    )
    summary.update(
        {
            "reward_stats": stats,
            "steps": step,
            "world_size": dist.world_size,
            "train_seconds": round(elapsed, 2),
            "tokens_per_s": round(tokens_seen / max(elapsed, 1e-9), 1),
            "pairs_per_s": round(pairs_seen / max(elapsed, 1e-9), 2),
        }
    )
    engine.save_hf(
        tokenizer,
        out_dir,
        merge_lora=cfg.lora.merge_lora,
        extra_json={"summary.json": summary, STATS_FILE: stats},
    )
    logger.print(f"[reward] saved reward model to {out_dir} ({elapsed:.1f}s of training)")
    logger.close()
    return summary
