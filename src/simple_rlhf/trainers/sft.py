"""Step 1: supervised fine-tuning (SFT) of any HF causal LM on demonstrations.

Variant: next-token cross-entropy on response tokens only (prompt tokens masked; ``--train-on-prompt``
trains on the whole text), EOS appended to every demonstration, loss normalised by the number of
response tokens in the whole optimiser step (so batch 8 x accumulation 1 equals batch 2 x
accumulation 4). Evaluates loss/perplexity before training, after each epoch and every
``--eval-steps``, and answers held-out prompts greedily, scored by ``--eval-reward-funcs`` (the
tiny task's gold reward on ``tiny``). Decides how prompts are rendered (``--prompt-format``) and
saves that with the model.

One CPU, tiny default (about a minute)::

    simple-rlhf sft --output-dir outputs/sft

A real model, LoRA (add ``--load-in-4bit`` for QLoRA: frozen NF4 base via bitsandbytes, saved
as a plain full-precision model with the adapters merged into the dequantised base)::

    simple-rlhf sft --model-name-or-path facebook/opt-1.3b --data-path Dahoas/rm-static \\
        --lora-dim 64 --learning-rate 1e-4 --output-dir outputs/opt-sft

Several GPUs (or CPU processes over gloo): the same command under a launcher, plain DDP or
DeepSpeed ZeRO (each rank takes a disjoint slice of every global batch of
``per_device_train_batch_size x N`` examples; the loss is normalised by the response tokens of the
global step, so N ranks x batch B equal one process with batch N x B)::

    torchrun --nproc_per_node 8 -m simple_rlhf sft --zero-stage 2 --dtype bfloat16 ...
    deepspeed --num_gpus 8 --module simple_rlhf sft --zero-stage 3 --offload all ...

(``simple-rlhf train --deployment-type single_node`` builds these commands.)
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch

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
from simple_rlhf.data.prompt_format import decide as decide_format
from simple_rlhf.data.prompt_format import get_format, glued_fraction
from simple_rlhf.data.tokenize import IGNORE_INDEX, collate_sft
from simple_rlhf.infra.checkpoint import latest_checkpoint
from simple_rlhf.infra.dist_checkpoint import load_checkpoint, save_checkpoint
from simple_rlhf.infra.distributed import Dist, init_distributed
from simple_rlhf.infra.logging import format_metrics
from simple_rlhf.infra.seed import set_seed
from simple_rlhf.models.loading import load_causal_lm, load_tokenizer
from simple_rlhf.models.logprobs import token_logprobs
from simple_rlhf.models.lora import apply_lora, check_qlora
from simple_rlhf.trainers import common


@dataclasses.dataclass(frozen=True)
class SFTArgs:
    """How the model's prompts are rendered: decided here from the data, saved with the model
    (``prompt_format`` in tokenizer_config.json) and read by every later command."""

    prompt_format: str = fld(
        "auto",
        "chat (chat template; plain-string prompts become user messages), raw (plain text + "
        "--raw-separator) or auto (the model's own if it has one and the data fits it, else "
        "the data's: message lists -> chat, strings -> raw)",
    )
    raw_separator: str = fld(
        "",
        "text put between a plain-string prompt and its response (e.g. '\\n'); default none: "
        "they are joined as they are, as in TRL and DeepSpeed-Chat",
    )

    def __post_init__(self) -> None:
        if self.prompt_format not in ("auto", "chat", "raw"):
            raise ConfigError(
                f"prompt_format: {self.prompt_format!r} is not one of auto, chat, raw"
            )


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning (step 1)."""

    model: ModelArgs = section(ModelArgs)
    data: DataArgs = section(DataArgs)
    optim: OptimArgs = section(
        lambda: OptimArgs(
            learning_rate=1e-3,
            num_train_epochs=6,
            min_train_steps=1500,
            per_device_train_batch_size=16,
        )
    )
    lora: LoraArgs = section(LoraArgs)
    log: LogArgs = section(lambda: LogArgs(output_dir="outputs/sft"))
    sft: SFTArgs = section(SFTArgs)
    heldout: HeldoutArgs = section(HeldoutArgs)
    dist: DistArgs = section(DistArgs)


def sequence_nll(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of the labelled tokens and their count."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits[:, :-1]  # [B, T-1, V] predicts token t+1
    labels = batch["labels"][:, 1:]  # [B, T-1]
    mask = labels != IGNORE_INDEX
    logprobs = token_logprobs(logits, labels)  # [B, T-1]
    return -(logprobs * mask).sum(), mask.sum()


@torch.no_grad()
def evaluate_loss(
    model: Any, examples: list[dict], batch_size: int, pad_id: int, dist: Dist | None = None
) -> dict:
    """Token-averaged loss and perplexity over ``examples`` (split over the ranks of ``dist``;
    padding copies have every label ignored, so they count for nothing)."""
    if dist is not None:
        shard, n_real = dist.shard_padded(examples)
        blank = [{**e, "labels": [IGNORE_INDEX] * len(e["labels"])} for e in shard[n_real:]]
        examples = shard[:n_real] + blank
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for chunk in common.batches(examples, batch_size, shuffle=False):
        batch = collate_sft(chunk, pad_id)
        nll, n = sequence_nll(model, dist.to_device(batch) if dist is not None else batch)
        total += float(nll)
        count += int(n)
    model.train(was_training)
    if dist is not None:
        total, count = dist.all_reduce_sum([total, count])
    loss = total / max(count, 1)
    return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50.0))}


def logger_last(summary: dict[str, Any]) -> dict[str, float]:
    """The most recent evaluation recorded in the summary."""
    return summary[list(summary)[-1]]


def decide_prompt_format(tokenizer: Any, records: list[Any], args: SFTArgs) -> str:
    """Decide (and store with the tokenizer) how prompts are rendered, from the training
    records; the returned line says what was decided, and warns when plain prompts and responses
    run into each other (``'...is 2+2' + '4'``)."""
    prompts = [r.prompt for r in records]
    note = decide_format(tokenizer, prompts, args.prompt_format, args.raw_separator)
    fmt = get_format(tokenizer)
    if fmt is not None and fmt.kind == "raw":
        glued = glued_fraction(((r.prompt, r.response) for r in records), fmt.separator)
        if glued > 0.5:
            note += (
                f"; note: {glued:.0%} of the plain-string records join a word at the end of the "
                "prompt directly to a word at the start of the response (no space, newline or "
                "punctuation between them): consider --raw-separator ' ' or '\\n'"
            )
    return note


def run(cfg: SFTConfig) -> dict[str, Any]:
    """Train, evaluate and save; returns the summary (also written to summary.json)."""
    # ---- setup ----
    dist = init_distributed(cfg.dist)  # one process: no process group, nothing changes
    set_seed(cfg.optim.seed)  # the same on every rank: model and LoRA initialisation agree
    out_dir = cfg.log.output_dir
    with dist.main_first():  # the node's main rank builds the tiny model / data cache first
        cfg = dataclasses.replace(cfg, model=common.fit_tiny_to_data(cfg.model, cfg.data, "sft"))
        tokenizer = load_tokenizer(
            cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
            trust_remote_code=cfg.model.trust_remote_code,
        )
        notes: list[str] = []

        def decide_format(records: list[Any]) -> None:
            notes.append(decide_prompt_format(tokenizer, records, cfg.sft))

        train, train_stats = load_encoded(
            tokenizer, cfg.data, "sft", step=1, split="train", prepare=decide_format
        )
        evals, _ = load_encoded(tokenizer, cfg.data, "sft", step=1, split="eval")
    heldout = common.heldout_evaluator(cfg, tokenizer)
    if not train:
        raise DataError("no training examples left after length filtering: raise --max-seq-len")
    plan = dist.plan(cfg.optim, cfg.model.dtype)  # before loading: ZeRO-3 partitions at load
    check_qlora(cfg.lora, plan.zero_stage, zero3_ok=True)  # QLoRA: LoRA on, adapters only
    with plan.loading():
        model = load_causal_lm(
            cfg.model.model_name_or_path,
            tokenizer,
            dtype=cfg.model.dtype,
            dropout=cfg.model.dropout,
            trust_remote_code=cfg.model.trust_remote_code,
            gradient_checkpointing=cfg.model.gradient_checkpointing,
            load_in_4bit=cfg.lora.load_in_4bit,
        )
    model = apply_lora(model, cfg.lora)
    o = cfg.optim
    total_steps = common.total_training_steps(o, len(train), dist.world_size)
    optimizer = common.build_optimizer(model, o, cfg.lora)
    scheduler = common.build_scheduler(optimizer, o, total_steps)
    engine = plan.wrap(model, optimizer, scheduler, allow_4bit=True)  # plain / DDP / DeepSpeed
    if dist.world_size > 1:
        set_seed(dist.rank_seed(o.seed))  # dropout differs per rank
    logger = common.start_logger(cfg, dist, total_steps)  # writes on rank 0 only
    logger.print(
        f"[sft] {engine.describe()}\n[sft] train examples: {train_stats.describe()}; eval "
        f"examples: {len(evals)}; {total_steps} optimiser steps of "
        f"{o.per_device_train_batch_size * dist.world_size * o.gradient_accumulation_steps} "
        "examples"
    )
    for line in [*notes, heldout.describe()]:
        logger.print(f"[sft] {line}")
    step, epoch, skip = 0, 0, 0
    ckpt = latest_checkpoint(out_dir) if cfg.log.resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, {"model": engine})
        step, epoch, skip = state["step"], state["epoch"], state["micro_in_epoch"]
        logger.print(f"[sft] resumed from {ckpt} at step {step}")

    pad_id = tokenizer.pad_token_id
    bs, eval_bs = o.per_device_train_batch_size, o.per_device_eval_batch_size
    summary: dict[str, Any] = {"train_examples": len(train), "eval_examples": len(evals)}

    merge = cfg.lora.merge_lora
    best = common.BestKeeper(
        cfg, lambda d: engine.save_hf(tokenizer, d, merge_lora=merge), logger, "sft", dist
    )

    def evaluate(tag: str) -> dict[str, float]:
        metrics = evaluate_loss(engine.module, evals, eval_bs, pad_id, dist) if evals else {}
        metrics.update(common.heldout_metrics(engine, heldout, tokenizer, logger))
        best.update(metrics, step)
        logger.log(metrics, step)
        logger.print(f"[sft] eval ({tag}, step {step}): {format_metrics(metrics)}")
        return metrics

    if step == 0:
        summary["before"] = common.remember_before(cfg, evaluate("before training"))
    common.recall_before(cfg, summary)  # a resumed run: the metrics before training, as measured

    # ---- train loop ----
    engine.train()
    t_start, tokens_seen, samples_seen = time.perf_counter(), 0.0, 0.0  # global counts
    last_eval = -1
    while step < total_steps:
        micro = common.rank_batches(train, bs, dist, shuffle=True, seed=o.seed + epoch)
        accum = o.gradient_accumulation_steps
        groups = [micro[i : i + accum] for i in range(0, len(micro), accum)]
        for gi in range(skip, len(groups)):
            batches = [dist.to_device(collate_sft(b, pad_id)) for b in groups[gi]]
            # normalise by the response tokens of the whole optimiser step on all ranks, not per
            # micro-batch; gradients are averaged over ranks, hence x world_size
            local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
            (n_tokens,) = dist.all_reduce_sum([local])
            loss_sum, step_tokens, step_samples = 0.0, 0, 0
            for b in engine.accumulate(batches):
                nll, _ = sequence_nll(engine.model, b)
                engine.backward(nll * dist.world_size / max(n_tokens, 1))
                loss_sum += float(nll.detach())
                step_tokens += int(b["attention_mask"].sum())
                step_samples += b["input_ids"].shape[0]
            norm = engine.step()
            step += 1
            loss_sum, step_tokens, step_samples = dist.all_reduce_sum(
                [loss_sum, step_tokens, step_samples]
            )
            tokens_seen += step_tokens
            samples_seen += step_samples
            loss = loss_sum / max(n_tokens, 1)
            elapsed = time.perf_counter() - t_start
            logger.progress(
                1, {"loss": loss, "lr": engine.lr, "tok/s": tokens_seen / max(elapsed, 1e-9)}
            )
            if step % cfg.log.logging_steps == 0 or step == total_steps:
                logger.log(
                    {
                        "train/loss": loss,
                        "train/lr": engine.lr,
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
                position = {"epoch": epoch, "micro_in_epoch": gi + 1}
                save_checkpoint(out_dir, step, {"model": engine}, position)
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
            "world_size": dist.world_size,
            "train_seconds": round(elapsed, 2),
            "tokens_per_s": round(tokens_seen / max(elapsed, 1e-9), 1),
            "samples_per_s": round(samples_seen / max(elapsed, 1e-9), 2),
            "best": best.describe(),
        }
    )
    engine.save_hf(
        tokenizer, out_dir, merge_lora=cfg.lora.merge_lora, extra_json={"summary.json": summary}
    )
    logger.print(f"[sft] saved model to {out_dir} ({elapsed:.1f}s of training)")
    best.restore(summary)
    logger.close()
    return summary
