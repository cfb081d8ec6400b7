"""The loop and setup the preference trainers share (trainers/preference.py for pairs,
trainers/kto.py for unpaired data): loading policy and reference, the data-share and evaluation
options, count-weighted metric means, held-out evaluation, and :func:`fit` — the visible
train loop (evaluate, train with accumulation, checkpoint, save) around a method's loss function.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch

from simple_rlhf.config import ConfigError, fld
from simple_rlhf.infra.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_hf_model,
)
from simple_rlhf.infra.logging import MetricsLogger, format_metrics
from simple_rlhf.models.loading import (
    count_parameters,
    disable_dropout,
    load_causal_lm,
    load_tokenizer,
)
from simple_rlhf.models.lora import apply_lora
from simple_rlhf.trainers import common
from simple_rlhf.trainers.pair_forward import Reference, frozen_copy

Metrics = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class PreferenceTrainArgs:
    """Data share, dropout and evaluation, shared by the preference trainers (and KTO)."""

    data_step: int = fld(
        2,
        "share of the DeepSpeed-Chat --data-split to train on: 1 (SFT), 2 (reward/preference "
        "share, default) or 3 (RL); unpaired (KTO) sources give all their records to step 2",
    )
    disable_dropout: bool = fld(True, "turn dropout off in the policy (deterministic log-probs)")
    gold_eval_prompts: int = fld(
        64, "held-out tiny-task prompts answered greedily to measure the gold reward (0: off)"
    )

    def __post_init__(self) -> None:
        if self.data_step not in (1, 2, 3):
            raise ConfigError(f"data_step: must be 1, 2 or 3, got {self.data_step}")


def setup_models(cfg: Any, with_reference: bool) -> tuple[Any, Any, Reference | None]:
    """Tokenizer, policy (LoRA applied as configured) and its :class:`Reference` (or ``None``).

    The reference is the policy with its adapter disabled when only LoRA weights train; otherwise
    a frozen copy of the initial policy, taken before the adapter is added.
    """
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
    if cfg.train.disable_dropout:
        disable_dropout(model)
    adapter_only = cfg.lora.lora_dim > 0 and cfg.lora.only_optimize_lora
    frozen = frozen_copy(model) if with_reference and not adapter_only else None
    model = apply_lora(model, cfg.lora)
    return tokenizer, model, Reference(model, frozen) if with_reference else None


class MeanMetrics:
    """Running, count-weighted means of scalar metrics."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, metrics: dict[str, Any], weight: float = 1.0) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * weight
            self.counts[k] = self.counts.get(k, 0.0) + weight

    def pop(self, prefix: str = "") -> dict[str, float]:
        out = {prefix + k: s / self.counts[k] for k, s in self.sums.items()}
        self.sums, self.counts = {}, {}
        return out


LossFn = Callable[[list[dict[str, Any]], bool], tuple[torch.Tensor, Metrics]]


@torch.no_grad()
def evaluate_loss(model: Any, loss_fn: LossFn, examples: list[dict], batch_size: int) -> dict:
    """Example-weighted mean of the loss and metrics over ``examples`` (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    meter = MeanMetrics()
    for chunk in common.batches(examples, batch_size, shuffle=False):
        loss, metrics = loss_fn(chunk, False)
        meter.add({"loss": loss, **metrics}, weight=len(chunk))
    model.train(was_training)
    return meter.pop("eval/")


def gold_metrics(cfg: Any, model: Any, tokenizer: Any) -> dict[str, float]:
    """Gold reward of greedy answers to held-out tiny-task prompts (empty off the tiny task)."""
    if "tiny" not in cfg.data.data_path or cfg.train.gold_eval_prompts <= 0:
        return {}
    from simple_rlhf.rollout.evaluate import evaluate_gold

    return evaluate_gold(model, tokenizer, n_prompts=cfg.train.gold_eval_prompts)


def fit(
    cfg: Any,
    tag: str,
    model: Any,
    tokenizer: Any,
    train: list[dict[str, Any]],
    loss_fn: LossFn,
    evaluate: Callable[[], dict[str, float]],
    state: dict[str, Any],
    header: str,
) -> dict[str, Any]:
    """The visible loop: evaluate, train (accumulation, clipping, schedule), evaluate per epoch
    and every ``eval_steps``, checkpoint every ``save_steps`` (``state`` rides along), save.

    ``loss_fn(examples, training) -> (loss, metrics)`` is the method; it returns the mean loss of
    its micro-batch, so each micro-batch's loss is divided by the accumulation steps.
    """
    out_dir, o = cfg.log.output_dir, cfg.optim
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
        f"[{tag}] {n_all / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trainable); {header}; "
        f"{total_steps} optimiser steps"
    )
    step, epoch, skip = 0, 0, 0
    ckpt = latest_checkpoint(out_dir) if cfg.log.resume else None
    if ckpt is not None:
        saved = load_checkpoint(
            ckpt,
            models={"model": model},
            optimizers={"opt": optimizer},
            schedulers={"lr": scheduler},
        )
        step, epoch, skip = saved["step"], saved["epoch"], saved["micro_in_epoch"]
        state.update(saved.get("method_state", {}))
        logger.print(f"[{tag}] resumed from {ckpt} at step {step}")
    summary: dict[str, Any] = {"train_examples": len(train)}

    def run_eval(name: str) -> dict[str, float]:
        metrics = evaluate()
        logger.log(metrics, step)
        logger.print(f"[{tag}] eval ({name}, step {step}): {format_metrics(metrics)}")
        return metrics

    if step == 0:
        summary["before"] = run_eval("before training")

    # ---- train loop ----
    model.train()
    meter, t_start, last_eval = MeanMetrics(), time.perf_counter(), -1
    accum = o.gradient_accumulation_steps
    while step < total_steps:
        micro = list(
            common.batches(train, o.per_device_train_batch_size, shuffle=True, seed=o.seed + epoch)
        )
        groups = [micro[i : i + accum] for i in range(0, len(micro), accum)]
        for gi in range(skip, len(groups)):
            for chunk in groups[gi]:
                loss, metrics = loss_fn(chunk, True)
                (loss / len(groups[gi])).backward()
                meter.add({"loss": loss.detach(), **metrics})
            norm = common.grad_norm(model, o.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            logger.progress(1, {"loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0]})
            if step % cfg.log.logging_steps == 0 or step == total_steps:
                logged = meter.pop("train/")
                logged.update(
                    {
                        "train/lr": scheduler.get_last_lr()[0],
                        "train/grad_norm": norm,
                        "train/epoch": epoch + (gi + 1) / len(groups),
                        "perf/seconds": time.perf_counter() - t_start,
                    }
                )
                logger.log(logged, step)
            if cfg.log.eval_steps and step % cfg.log.eval_steps == 0:
                summary[f"step_{step}"] = run_eval(f"step {step}")
                last_eval = step
            if cfg.log.save_steps and step % cfg.log.save_steps == 0:
                save_checkpoint(
                    out_dir,
                    step,
                    models={"model": model},
                    optimizers={"opt": optimizer},
                    schedulers={"lr": scheduler},
                    state={"epoch": epoch, "micro_in_epoch": gi + 1, "method_state": state},
                )
            if step >= total_steps:
                break
        else:  # a whole epoch done
            epoch, skip = epoch + 1, 0
            summary[f"epoch_{epoch}"] = run_eval(f"epoch {epoch}")
            last_eval = step

    # ---- save ----
    elapsed = time.perf_counter() - t_start
    summary["after"] = run_eval("final") if last_eval != step else summary[list(summary)[-1]]
    summary.update({"steps": step, "train_seconds": round(elapsed, 2), "method_state": state})
    save_hf_model(
        model,
        tokenizer,
        out_dir,
        merge_lora=cfg.lora.merge_lora,
        extra_json={"summary.json": summary},
    )
    logger.print(f"[{tag}] saved model to {out_dir} ({elapsed:.1f}s of training)")
    logger.close()
    return summary
