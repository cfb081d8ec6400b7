"""Step 1: supervised fine-tuning (SFT) of any HF causal LM on demonstrations.

Variant: next-token cross-entropy on response tokens only (prompt tokens masked; ``--train-on-prompt``
trains on the whole text), EOS appended to every demonstration, loss normalised by the number of
response tokens in the whole optimiser step (so batch 8 x accumulation 1 equals batch 2 x
accumulation 4). Evaluates loss/perplexity before training, after each epoch and every
``--eval-steps``; on the tiny task also the gold reward of greedy answers to held-out prompts.

One CPU, tiny default (about a minute)::

    simple-rlhf sft --output-dir outputs/sft

A real model, LoRA::

    simple-rlhf sft --model-name-or-path facebook/opt-1.3b --data-path Dahoas/rm-static \\
        --lora-dim 64 --learning-rate 1e-4 --output-dir outputs/opt-sft

Several GPUs: the same command under ``torchrun --nproc_per_node N`` or ``deepspeed`` (see docs of
``simple-rlhf train --deployment-type``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch

from simple_rlhf.config import DataArgs, LogArgs, LoraArgs, ModelArgs, OptimArgs, fld, section
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
from simple_rlhf.models.loading import count_parameters, load_causal_lm, load_tokenizer
from simple_rlhf.models.logprobs import token_logprobs
from simple_rlhf.models.lora import apply_lora
from simple_rlhf.trainers import common


@dataclasses.dataclass(frozen=True)
class SFTEvalArgs:
    """Extra evaluation for SFT."""

    gold_eval_prompts: int = fld(
        64, "held-out tiny-task prompts answered greedily to measure the gold reward (0: off)"
    )


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning (step 1)."""

    model: ModelArgs = section(ModelArgs)
    data: DataArgs = section(DataArgs)
    optim: OptimArgs = section(
        lambda: OptimArgs(learning_rate=3e-3, num_train_epochs=6, per_device_train_batch_size=16)
    )
    lora: LoraArgs = section(LoraArgs)
    log: LogArgs = section(lambda: LogArgs(output_dir="outputs/sft"))
    sft: SFTEvalArgs = section(SFTEvalArgs)


def sequence_nll(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of the labelled tokens and their count."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits[:, :-1]  # [B, T-1, V] predicts token t+1
    labels = batch["labels"][:, 1:]  # [B, T-1]
    mask = labels != IGNORE_INDEX
    logprobs = token_logprobs(logits, labels)  # [B, T-1]
    return -(logprobs * mask).sum(), mask.sum()


@torch.no_grad()
def evaluate_loss(model: Any, examples: list[dict], batch_size: int, pad_id: int) -> dict:
    """Token-averaged loss and perplexity over ``examples``."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for chunk in common.batches(examples, batch_size, shuffle=False):
        nll, n = sequence_nll(model, collate_sft(chunk, pad_id))
        total += float(nll)
        count += int(n)
    model.train(was_training)
    loss = total / max(count, 1)
    return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50.0))}


def gold_eval(model: Any, tokenizer: Any, n_prompts: int, seed: int = 0) -> dict[str, float]:
    """Gold reward of greedy answers to held-out tiny-task prompts (tiny task only)."""
    from simple_rlhf.rollout.evaluate import evaluate_gold

    return evaluate_gold(model, tokenizer, n_prompts=n_prompts, seed=seed)


def logger_last(summary: dict[str, Any]) -> dict[str, float]:
    """The most recent evaluation recorded in the summary."""
    return summary[list(summary)[-1]]


def uses_tiny_task(cfg: SFTConfig) -> bool:
    return "tiny" in cfg.data.data_path


def run(cfg: SFTConfig) -> dict[str, Any]:
    """Train, evaluate and save; returns the summary (also written to summary.json)."""
    # ---- setup ----
    set_seed(cfg.optim.seed)
    out_dir = cfg.log.output_dir
    tokenizer = load_tokenizer(
        cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    model = load_causal_lm(
        cfg.model.model_name_or_path,
        tokenizer,
        dtype=cfg.model.dtype,
        dropout=cfg.model.dropout,
        trust_remote_code=cfg.model.trust_remote_code,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
    )
    model = apply_lora(model, cfg.lora)
    train, train_stats = load_encoded(tokenizer, cfg.data, "sft", step=1, split="train")
    evals, _ = load_encoded(tokenizer, cfg.data, "sft", step=1, split="eval")
    if not train:
        raise ValueError("no training examples left after length filtering: raise --max-seq-len")
    o = cfg.optim
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
        f"[sft] {n_all / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trainable); train examples: "
        f"{train_stats.describe()}; eval examples: {len(evals)}; {total_steps} optimiser steps"
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
        logger.print(f"[sft] resumed from {ckpt} at step {step}")

    pad_id = tokenizer.pad_token_id
    bs, eval_bs = o.per_device_train_batch_size, o.per_device_eval_batch_size
    summary: dict[str, Any] = {"train_examples": len(train), "eval_examples": len(evals)}
    tiny = uses_tiny_task(cfg) and cfg.sft.gold_eval_prompts > 0

    def evaluate(tag: str) -> dict[str, float]:
        metrics = evaluate_loss(model, evals, eval_bs, pad_id) if evals else {}
        if tiny:
            metrics.update(gold_eval(model, tokenizer, cfg.sft.gold_eval_prompts))
        logger.log(metrics, step)
        logger.print(f"[sft] eval ({tag}, step {step}): {format_metrics(metrics)}")
        return metrics

    if step == 0:
        summary["before"] = evaluate("before training")

    # ---- train loop ----
    model.train()
    t_start, tokens_seen, samples_seen = time.perf_counter(), 0, 0
    last_eval = -1
    while step < total_steps:
        micro = list(common.batches(train, bs, shuffle=True, seed=o.seed + epoch))
        accum = o.gradient_accumulation_steps
        groups = [micro[i : i + accum] for i in range(0, len(micro), accum)]
        for gi in range(skip, len(groups)):
            batches = [collate_sft(b, pad_id) for b in groups[gi]]
            # normalise by the response tokens of the whole optimiser step, not per micro-batch
            n_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
            loss_sum = 0.0
            for b in batches:
                nll, _ = sequence_nll(model, b)
                (nll / max(n_tokens, 1)).backward()
                loss_sum += float(nll.detach())
                tokens_seen += int(b["attention_mask"].sum())
                samples_seen += b["input_ids"].shape[0]
            norm = common.grad_norm(model, o.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss = loss_sum / max(n_tokens, 1)
            logger.progress(1, {"loss": loss, "lr": scheduler.get_last_lr()[0]})
            if step % cfg.log.logging_steps == 0 or step == total_steps:
                elapsed = time.perf_counter() - t_start
                logger.log(
                    {
                        "train/loss": loss,
                        "train/lr": scheduler.get_last_lr()[0],
                        "train/grad_norm": norm,
                        "train/epoch": epoch + (gi + 1) / len(groups),
                        "perf/tokens_per_s": tokens_seen / elapsed,
                        "perf/samples_per_s": samples_seen / elapsed,
                    },
                    step,
                )
            if cfg.log.eval_steps and step % cfg.log.eval_steps == 0:
                summary[f"step_{step}"] = evaluate(f"step {step}")
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
            summary[f"epoch_{epoch}"] = evaluate(f"epoch {epoch}")
            last_eval = step

    # ---- save ----
    elapsed = time.perf_counter() - t_start
    summary["after"] = evaluate("final") if last_eval != step else logger_last(summary)
    summary.update(
        {
            "steps": step,
            "train_seconds": round(elapsed, 2),
            "tokens_per_s": round(tokens_seen / max(elapsed, 1e-9), 1),
            "samples_per_s": round(samples_seen / max(elapsed, 1e-9), 2),
        }
    )
    save_hf_model(
        model,
        tokenizer,
        out_dir,
        merge_lora=cfg.lora.merge_lora,
        extra_json={"summary.json": summary},
    )
    logger.print(f"[sft] saved model to {out_dir} ({elapsed:.1f}s of training)")
    logger.close()
    return summary
