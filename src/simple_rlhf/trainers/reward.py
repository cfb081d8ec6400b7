"""Step 2: reward model (RM) training on preference pairs (prompt, chosen, rejected).

Variant: an ``AutoModelForSequenceClassification`` (``num_labels=1``) built on any HF backbone (the
tiny base, the SFT model, or a smaller model beside the actor); its score ``r(x, y)`` is the scalar
head read at the last real token (the EOS every response ends with), for any padding side
(``models/reward.py::sequence_scores``). The loss is chosen by name (``--loss-type``):

- ``pairwise`` (default): Bradley–Terry ``-log σ(r_c - r_r - m) + c · (r_c + r_r)²`` per pair,
  averaged over the pairs of the optimiser step (``--margin`` m, ``--center-coef`` c);
- ``dschat``: DeepSpeed-Chat's token-wise loss from the first differing token to the end.

Chosen and rejected go through one forward pass (``[2B, T]``, chosen rows first). Pairs come from
step 2 of the ``--data-split``; too-long pairs are dropped (or truncated, ``--truncation``) and
counted. Evaluation before training, after each epoch and every ``--eval-steps`` on the held-out
pairs (all, or ``--eval-batches``): pairwise accuracy (ties count as wrong), mean chosen / rejected
score, margin, loss; on the tiny task also the Spearman correlation of the scores with the gold
reward over every held-out response and the accuracy against the noise-free gold order.

After training the mean and std of the raw scores on a reference set (held-out chosen responses by
default, ``--stats-reference``) go to ``reward_stats.json`` beside the model; ``RewardScorer``
applies them (``(r - mean) / std``) when step 3 scores rollouts.

One CPU, tiny default (RM from the SFT model: 6 epochs of 250 steps, ~2 CPU-minutes; held-out
accuracy 0.46 -> 0.835 against labels of which 14.5% are flipped, so 0.855 is the ceiling;
0.94 against the noise-free gold order; Spearman with the gold reward 0.59, as the labels only
order answers within a prompt. ``--loss-type dschat``: 0.79 / 0.905 / 0.74)::

    simple-rlhf reward --model-name-or-path outputs/sft --output-dir outputs/reward

A real backbone, LoRA (the head stays fully trainable)::

    simple-rlhf reward --model-name-or-path facebook/opt-350m --data-path Dahoas/rm-static \\
        --lora-dim 64 --learning-rate 5e-5 --per-device-train-batch-size 8 --output-dir outputs/rm

Several GPUs: the same command under ``torchrun --nproc_per_node N`` or ``deepspeed``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from simple_rlhf.config import (
    ConfigError,
    DataArgs,
    LogArgs,
    LoraArgs,
    ModelArgs,
    OptimArgs,
    fld,
    section,
)
from simple_rlhf.data.pipeline import load_encoded
from simple_rlhf.data.tokenize import collate_pairs
from simple_rlhf.infra.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_hf_model,
)
from simple_rlhf.infra.logging import MetricsLogger, format_metrics
from simple_rlhf.infra.seed import set_seed
from simple_rlhf.losses.reward import (
    REWARD_LOSS_NAMES,
    dschat_pairwise_loss,
    last_token_values,
    pairwise_loss,
)
from simple_rlhf.models.forward import token_values
from simple_rlhf.models.loading import count_parameters, load_tokenizer
from simple_rlhf.models.lora import apply_lora
from simple_rlhf.models.reward import STATS_FILE, load_reward_model, sequence_scores
from simple_rlhf.trainers import common

STATS_REFERENCES = ("eval_chosen", "eval_all", "train_chosen")
TRAIN_REFERENCE_CAP = 1024  # responses scored for the stats when the reference is the train split


@dataclasses.dataclass(frozen=True)
class RewardArgs:
    """Reward-model loss, evaluation and score normalisation."""

    loss_type: str = fld("pairwise", "loss: 'pairwise' (Bradley–Terry) or 'dschat' (token-wise)")
    margin: float = fld(0.0, "pairwise only: required score gap m in -log σ(r_c - r_r - m)")
    center_coef: float = fld(
        0.0, "pairwise only: reward-centering coefficient c, adds c · mean((r_c + r_r)^2)"
    )
    eval_batches: int | None = fld(
        None, "evaluate on at most this many held-out batches (None: all held-out pairs)"
    )
    gold_eval: bool = fld(
        True, "tiny task: also report Spearman(RM score, gold reward) on held-out responses"
    )
    stats_reference: str = fld(
        "eval_chosen",
        "responses whose raw scores give the stored mean/std: eval_chosen, eval_all "
        "(chosen + rejected) or train_chosen",
    )

    def __post_init__(self) -> None:
        if self.loss_type not in REWARD_LOSS_NAMES:
            raise ConfigError(
                f"loss_type: {self.loss_type!r} is not one of {', '.join(REWARD_LOSS_NAMES)}"
            )
        if self.loss_type != "pairwise" and (self.margin or self.center_coef):
            raise ConfigError("margin and center_coef apply to loss_type 'pairwise' only")
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
            learning_rate=1e-3,
            num_train_epochs=6,
            per_device_train_batch_size=16,
            per_device_eval_batch_size=32,
            weight_decay=0.0,
        )
    )
    lora: LoraArgs = section(LoraArgs)
    log: LogArgs = section(lambda: LogArgs(output_dir="outputs/reward"))
    reward: RewardArgs = section(RewardArgs)


# ---- losses, chosen by name ---------------------------------------------------------------------

Objective = Callable[[torch.Tensor, dict[str, torch.Tensor], RewardArgs], tuple[torch.Tensor, dict]]


def _pairwise_objective(values: torch.Tensor, batch: dict, args: RewardArgs):
    """Bradley–Terry on the last-token scores; ``values`` ``[2B, T]``, chosen rows first."""
    scores = last_token_values(values, batch["attention_mask"])  # [2B]
    chosen, rejected = scores.chunk(2)
    margin = torch.full_like(chosen, args.margin) if args.margin else None
    return pairwise_loss(chosen, rejected, margin=margin, center_coef=args.center_coef)


def _dschat_objective(values: torch.Tensor, batch: dict, args: RewardArgs):
    """DeepSpeed-Chat's token-wise pairwise loss on per-token values ``[2B, T]``."""
    vc, vr = values.chunk(2)
    ic, ir = batch["input_ids"].chunk(2)
    mc, mr = batch["attention_mask"].chunk(2)
    return dschat_pairwise_loss(vc, vr, ic, ir, mc, mr)


OBJECTIVES: dict[str, Objective] = {"pairwise": _pairwise_objective, "dschat": _dschat_objective}


def pair_batch(examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``attention_mask`` ``[2B, T]``, right-padded, chosen rows first."""
    b = collate_pairs(examples, pad_id)
    return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}


def backward_step(
    model: Any, chunks: Sequence[Sequence[dict]], pad_id: int, args: RewardArgs
) -> tuple[float, dict[str, float], int]:
    """Forward and backward over the micro-batches of one optimiser step (gradients accumulate).

    Each micro-batch's loss is a mean over its pairs; it is weighted by ``B_micro / B_step`` so
    the accumulated gradient is that of the mean over all pairs of the step (batch 4 x
    accumulation 1 equals batch 2 x accumulation 2). Returns the step's loss, its metrics (same
    weighting) and the number of real tokens seen.
    """
    objective = OBJECTIVES[args.loss_type]
    n_pairs = sum(len(c) for c in chunks)
    loss_sum, stats_sum, tokens = 0.0, {}, 0
    for chunk in chunks:
        b = pair_batch(chunk, pad_id)
        values = token_values(model, b["input_ids"], b["attention_mask"])  # [2B, T]
        loss, metrics = objective(values, b, args)
        w = len(chunk) / n_pairs
        (loss * w).backward()
        loss_sum += float(loss.detach()) * w
        for k, v in metrics.items():
            stats_sum[k] = stats_sum.get(k, 0.0) + float(v) * w
        tokens += int(b["attention_mask"].sum())
    return loss_sum, stats_sum, tokens


# ---- evaluation ----------------------------------------------------------------------------------


def rank(x: Sequence[float]) -> list[float]:
    """Ranks 1..n with ties given their average rank (as Spearman's rho needs)."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: the Pearson correlation of the (tie-averaged) ranks.

    ``rho = cov(rank x, rank y) / (std(rank x) · std(rank y))``; NaN if either side is constant.
    """
    if len(x) != len(y):
        raise ValueError(f"{len(x)} vs {len(y)} values")
    rx, ry = rank(x), rank(y)
    n = len(rx)
    if n < 2:
        return float("nan")
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    if vx == 0 or vy == 0:
        return float("nan")
    return cov / math.sqrt(vx * vy)


def pair_eval_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Held-out metrics of scores ``[N]``: accuracy = #(r_c > r_r) / N (ties count as wrong),
    means, margin = mean(r_c - r_r), loss = mean(-log σ(r_c - r_r))."""
    chosen, rejected = chosen.double(), rejected.double()
    return {
        "eval/accuracy": float((chosen > rejected).double().mean()),
        "eval/chosen_mean": float(chosen.mean()),
        "eval/rejected_mean": float(rejected.mean()),
        "eval/margin_mean": float((chosen - rejected).mean()),
        "eval/loss": float(-F.logsigmoid(chosen - rejected).mean()),
    }


@torch.no_grad()
def score_examples(
    model: Any,
    examples: Sequence[dict[str, list[int]]],
    batch_size: int,
    pad_id: int,
    max_batches: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw scores of the chosen and rejected responses ``([N], [N])`` (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for i, chunk in enumerate(common.batches(examples, batch_size, shuffle=False)):
        if max_batches is not None and i >= max_batches:
            break
        b = pair_batch(chunk, pad_id)
        c, r = sequence_scores(model, b["input_ids"], b["attention_mask"]).chunk(2)
        chosen.append(c)
        rejected.append(r)
    model.train(was_training)
    if not chosen:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(chosen).float().cpu(), torch.cat(rejected).float().cpu()


def gold_rewards(tokenizer: Any, examples: Sequence[dict]) -> list[tuple[float, float]] | None:
    """Gold reward of (chosen, rejected) per pair for tiny-task prompts (decoded from the ids);
    None when the data is not the tiny task."""
    from simple_rlhf.data.tiny_task import gold_reward, parse_prompt

    def text(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    out = []
    for ex in examples:
        prompt = text(ex["prompt_ids"])
        if parse_prompt(prompt) is None:
            return None
        out.append(
            (
                gold_reward(prompt, text(ex["chosen_ids"])),
                gold_reward(prompt, text(ex["rejected_ids"])),
            )
        )
    return out or None


def gold_metrics(
    chosen: torch.Tensor, rejected: torch.Tensor, gold: Sequence[tuple[float, float]]
) -> dict[str, float]:
    """Agreement with the gold reward over the first ``N = len(chosen)`` pairs.

    ``eval/spearman_gold``: Spearman(score, gold) over all 2N responses;
    ``eval/gold_accuracy``: fraction of the pairs with unequal gold rewards that the RM orders
    like the gold reward (the accuracy against noise-free labels).
    """
    gold = list(gold)[: len(chosen)]
    scores = chosen.tolist() + rejected.tolist()
    golds = [g for g, _ in gold] + [g for _, g in gold]
    agree = [
        (c > r) == (gc > gr)
        for c, r, (gc, gr) in zip(chosen.tolist(), rejected.tolist(), gold, strict=True)
        if gc != gr
    ]
    return {
        "eval/spearman_gold": spearman(scores, golds),
        "eval/gold_accuracy": sum(agree) / len(agree) if agree else float("nan"),
    }


@torch.no_grad()
def reference_stats(
    model: Any,
    examples: Sequence[dict[str, list[int]]],
    which: str,
    batch_size: int,
    pad_id: int,
) -> dict[str, Any]:
    """Mean and (population) std of the raw scores of the reference responses."""
    chosen, rejected = score_examples(model, examples, batch_size, pad_id)
    scores = torch.cat([chosen, rejected]) if which == "eval_all" else chosen
    scores = scores.double()
    return {
        "mean": float(scores.mean()),
        "std": float(scores.std(unbiased=False)),
        "n": int(scores.numel()),
        "reference": which,
    }


# ---- training ------------------------------------------------------------------------------------


def run(cfg: RewardConfig) -> dict[str, Any]:
    """Train, evaluate, compute normalisation stats and save; returns the summary."""
    # ---- setup ----
    set_seed(cfg.optim.seed)
    out_dir, ra, o = cfg.log.output_dir, cfg.reward, cfg.optim
    tokenizer = load_tokenizer(
        cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    model = load_reward_model(
        cfg.model.model_name_or_path,
        tokenizer,
        dtype=cfg.model.dtype,
        dropout=cfg.model.dropout,
        trust_remote_code=cfg.model.trust_remote_code,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
    )
    model = apply_lora(model, cfg.lora, task_type="SEQ_CLS", extra_trainable=["score"])
    train, train_stats = load_encoded(tokenizer, cfg.data, "pair", step=2, split="train")
    evals, eval_stats = load_encoded(tokenizer, cfg.data, "pair", step=2, split="eval")
    if not train:
        raise ValueError("no training pairs left after length filtering: raise --max-seq-len")
    per_epoch = common.steps_per_epoch(
        len(train), o.per_device_train_batch_size, o.gradient_accumulation_steps
    )
    total_steps = o.max_steps or per_epoch * o.num_train_epochs
    optimizer = common.build_optimizer(model, o, cfg.lora)
    scheduler = common.build_scheduler(optimizer, o, total_steps)
    logger = MetricsLogger(
        out_dir, cfg.log.report_to, total_steps=total_steps, progress_bar=cfg.log.progress_bar
    )
    common.save_run_config(out_dir, cfg)
    n_all, n_train = count_parameters(model)
    logger.print(
        f"[reward] {n_all / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trainable); loss "
        f"{ra.loss_type}; train pairs: {train_stats.describe()}; eval pairs: "
        f"{eval_stats.describe()}; {total_steps} optimiser steps"
    )
    step, epoch, skip = 0, 0, 0
    ckpt = latest_checkpoint(out_dir) if cfg.log.resume else None
    if ckpt is not None:
        state = load_checkpoint(
            ckpt,
            models={"model": model},
            optimizers={"opt": optimizer},
            schedulers={"lr": scheduler},
        )
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
    }
    gold = gold_rewards(tokenizer, evals) if ra.gold_eval and evals else None

    def evaluate(tag: str) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if evals:
            chosen, rejected = score_examples(model, evals, eval_bs, pad_id, ra.eval_batches)
            metrics = pair_eval_metrics(chosen, rejected)
            if gold is not None:
                metrics.update(gold_metrics(chosen, rejected, gold))
        logger.log(metrics, step)
        logger.print(f"[reward] eval ({tag}, step {step}): {format_metrics(metrics)}")
        return metrics

    if step == 0:
        summary["before"] = evaluate("before training")

    # ---- train loop ----
    model.train()
    t_start, tokens_seen, pairs_seen, last_eval = time.perf_counter(), 0, 0, -1
    while step < total_steps:
        micro = list(common.batches(train, bs, shuffle=True, seed=o.seed + epoch))
        accum = o.gradient_accumulation_steps
        groups = [micro[i : i + accum] for i in range(0, len(micro), accum)]
        for gi in range(skip, len(groups)):
            loss_sum, stats_sum, n_tokens = backward_step(model, groups[gi], pad_id, ra)
            tokens_seen += n_tokens
            pairs_seen += sum(len(c) for c in groups[gi])
            norm = common.grad_norm(model, o.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            logger.progress(1, {"loss": loss_sum, "acc": stats_sum.get("accuracy", 0.0)})
            if step % cfg.log.logging_steps == 0 or step == total_steps:
                elapsed = time.perf_counter() - t_start
                logger.log(
                    {
                        "train/loss": loss_sum,
                        **{f"train/{k}": v for k, v in stats_sum.items()},
                        "train/lr": scheduler.get_last_lr()[0],
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
                save_checkpoint(
                    out_dir,
                    step,
                    models={"model": model},
                    optimizers={"opt": optimizer},
                    schedulers={"lr": scheduler},
                    state={"epoch": epoch, "micro_in_epoch": gi + 1},
                )
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
    which = ra.stats_reference if evals else "train_chosen"
    ref = evals if which != "train_chosen" else train[:TRAIN_REFERENCE_CAP]
    stats = reference_stats(model, ref, which, eval_bs, pad_id)
    logger.print(
        f"[reward] score stats on {stats['n']} {which} responses: mean {stats['mean']:.4g}, "
        f"std {stats['std']:.4g} (written to {STATS_FILE})"
    )
    summary.update(
        {
            "reward_stats": stats,
            "steps": step,
            "train_seconds": round(elapsed, 2),
            "tokens_per_s": round(tokens_seen / max(elapsed, 1e-9), 1),
            "pairs_per_s": round(pairs_seen / max(elapsed, 1e-9), 2),
        }
    )
    save_hf_model(
        model,
        tokenizer,
        out_dir,
        merge_lora=cfg.lora.merge_lora,
        extra_json={"summary.json": summary, STATS_FILE: stats},
    )
    logger.print(f"[reward] saved reward model to {out_dir} ({elapsed:.1f}s of training)")
    logger.close()
    return summary
