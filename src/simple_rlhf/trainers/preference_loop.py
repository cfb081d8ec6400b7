"""The loop and setup the preference trainers share (trainers/preference.py for pairs,
trainers/kto.py for unpaired data): policy and reference loading, the data-share and evaluation
options, count-weighted metric means, evaluation split over the ranks, and :func:`fit` — the
visible train loop (evaluate, train with accumulation, checkpoint, save) around a method's loss.

Distributed (``infra/distributed.py``, the SFT pattern): one process with no launcher and no
``--zero-stage`` is the plain loop. Under ``torchrun``/``deepspeed`` each rank takes its slice of
every global batch of ``per_device_train_batch_size x world_size`` examples; the policy's training
forward goes through ``engine.model`` (DDP / DeepSpeed wrapper, so gradients synchronise), every
other forward (reference, KTO's KL pass, evaluation) through the raw module. A method's loss is a
mean over its micro-batch of ``b`` examples, so each rank back-propagates
``loss x b x world_size / n_step`` (``n_step``: examples of the optimiser step on all ranks) and
the gradient average over ranks is the example-weighted mean of the global step — exactly the
one-process loss for per-example losses (DPO family, KTO); terms that are token means within a
micro-batch (the NLL of RPO/CPO/ORPO) become example-weighted means of per-rank token means.

The reference model: the policy with its LoRA adapter disabled when only adapters train, else a
second, frozen load of the same weights wrapped by ``plan.wrap_frozen`` (ZeRO-3: partitioned over
the ranks like the policy). Precomputed reference log-probs are computed on each rank's padded
shard of the data and summed over ranks, so every rank holds all of them (and every rank ran the
same forwards, as ZeRO-3 needs).

QLoRA (``--load-in-4bit``) works at every ZeRO stage, 3 included: with adapters only, the
reference is the 4-bit base with the adapter disabled (on the fly or precomputed); the save
gathers the 4-bit model and writes it merged (``Engine.save_hf``). DPO and KTO at ZeRO-3 are
compared with one process in ``tests/infra/test_distributed.py``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from simple_rlhf.config import ConfigError, OptimArgs, fld
from simple_rlhf.infra.checkpoint import latest_checkpoint
from simple_rlhf.infra.dist_checkpoint import load_checkpoint, save_checkpoint
from simple_rlhf.infra.distributed import Dist, Engine, Plan
from simple_rlhf.infra.seed import set_seed
from simple_rlhf.models.loading import disable_dropout
from simple_rlhf.models.lora import apply_lora, check_qlora
from simple_rlhf.trainers import common
from simple_rlhf.trainers.pair_forward import REF_KEY, Reference, precompute_reference

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

    def __post_init__(self) -> None:
        if self.data_step not in (1, 2, 3):
            raise ConfigError(f"data_step: must be 1, 2 or 3, got {self.data_step}")


def optim_defaults(**kw: Any) -> Callable[[], OptimArgs]:
    """Factory of the preference trainers' ``optim`` section: 1 epoch (at least 250 steps) of
    batch 16 with a linear schedule, plus ``kw`` (e.g. the method's learning rate)."""
    base = {
        "num_train_epochs": 1,
        "min_train_steps": 250,  # a small file gets more than one pass (the tiny task: 250 steps)
        "per_device_train_batch_size": 16,
        "lr_scheduler_type": "linear",
    }
    return lambda: OptimArgs(**{**base, **kw})


@dataclasses.dataclass
class Models:
    """What :func:`setup_models` builds: the policy (LoRA applied, not wrapped yet), the plan that
    will wrap it, its :class:`Reference` (or ``None``) and the frozen reference's engine (kept
    alive: under ZeRO-3 it owns the hooks that gather the reference's parameters)."""

    plan: Plan
    model: Any
    reference: Reference | None
    ref_engine: Engine | None = None


def setup_models(cfg: Any, dist: Dist, tokenizer: Any, with_reference: bool) -> Models:
    """Policy (QLoRA's 4-bit base if ``--load-in-4bit``, any ZeRO stage; LoRA as configured) and
    its reference.

    The reference is the policy with its adapter disabled when only LoRA weights train; otherwise
    a second load of the same weights in the run dtype (never 4-bit), frozen, dropout off, wrapped
    by ``plan.wrap_frozen`` (ZeRO-3: partitioned at load and over the ranks). Both loads are made
    under ``plan.loading()``, so the RNG (hence LoRA's initialisation) does not depend on them.
    """
    plan = dist.plan(cfg.optim, cfg.model.dtype)  # before loading: ZeRO-3 partitions at load
    check_qlora(cfg.lora, plan.zero_stage, zero3_ok=True)  # QLoRA: LoRA on
    with plan.loading():
        model = common.load_base_lm(cfg.model, tokenizer, load_in_4bit=cfg.lora.load_in_4bit)
    if cfg.train.disable_dropout:
        disable_dropout(model)  # before LoRA: the adapter keeps its own lora_dropout
    adapter_only = cfg.lora.lora_dim > 0 and cfg.lora.only_optimize_lora
    ref_engine = None
    if with_reference and not adapter_only:
        with plan.loading():
            frozen = common.load_frozen_lm(cfg.model.model_name_or_path, tokenizer, cfg.model)
        ref_engine = plan.wrap_frozen(frozen)
    model = apply_lora(model, cfg.lora)
    if not with_reference:
        return Models(plan, model, None)
    reference = Reference(model, ref_engine.module if ref_engine is not None else None)
    return Models(plan, model, reference, ref_engine)


def build_engine(cfg: Any, dist: Dist, models: Models, n_train: int) -> tuple[Engine, int]:
    """Optimiser and schedule for ``n_train`` examples, wrapped by the plan (plain / DDP /
    DeepSpeed); returns the engine and the number of optimiser steps. Afterwards each rank draws
    its own random numbers (``seed + rank``: dropout differs per rank)."""
    o = cfg.optim
    total_steps = common.total_training_steps(o, n_train, dist.world_size)
    optimizer = common.build_optimizer(models.model, o, cfg.lora)
    scheduler = common.build_scheduler(optimizer, o, total_steps)
    engine = models.plan.wrap(models.model, optimizer, scheduler, allow_4bit=True)
    if dist.world_size > 1:
        set_seed(dist.rank_seed(o.seed))
    return engine, total_steps


@torch.no_grad()
def precompute_sharded(
    dist: Dist,
    reference: Reference,
    examples: Sequence[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int,
) -> list[dict[str, Any]]:
    """:func:`~simple_rlhf.trainers.pair_forward.precompute_reference` split over the ranks: each
    rank computes its padded shard (same number of forwards everywhere), the values are summed
    over ranks into one ``[n, 2, 2]`` table (zeros elsewhere), and every rank gets all examples
    back with their reference log-probs. One process: exactly ``precompute_reference``."""
    if dist.world_size == 1:
        return precompute_reference(reference, examples, collate, batch_size)
    index, n_real = dist.shard_padded(list(range(len(examples))))
    done = precompute_reference(reference, [examples[i] for i in index], collate, batch_size)
    table = torch.zeros(len(examples), 2, 2, dtype=torch.float64)
    for i, ex in zip(index[:n_real], done[:n_real], strict=True):
        table[i] = torch.tensor(ex[REF_KEY], dtype=torch.float64)
    summed = torch.tensor(dist.all_reduce_sum(table.flatten().tolist())).view(-1, 2, 2)
    return [{**ex, REF_KEY: summed[i].tolist()} for i, ex in enumerate(examples)]


class MeanMetrics:
    """Running, count-weighted means of scalar metrics (optionally over all ranks)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, metrics: dict[str, Any], weight: float = 1.0) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * weight
            self.counts[k] = self.counts.get(k, 0.0) + weight

    def pop(self, prefix: str = "", dist: Dist | None = None) -> dict[str, float]:
        """``sum_i w_i v_i / sum_i w_i`` per metric, the sums taken over all ranks of ``dist``
        (a collective: every rank must call it with the same metric names)."""
        keys = sorted(self.sums)
        values = [self.sums[k] for k in keys] + [self.counts[k] for k in keys]
        if dist is not None:
            values = dist.all_reduce_sum(values)
        n = len(keys)
        out = {prefix + k: values[i] / values[n + i] for i, k in enumerate(keys)}
        self.sums, self.counts = {}, {}
        return out


LossFn = Callable[[list[dict[str, Any]], bool], tuple[torch.Tensor, Metrics]]


@torch.no_grad()
def sharded_means(
    dist: Dist,
    examples: Sequence[dict[str, Any]],
    batch_size: int,
    fn: Callable[[list[dict[str, Any]]], dict[str, Any]],
    prefix: str = "",
) -> dict[str, float]:
    """Example-weighted means of ``fn(chunk)`` (means over the chunk) over ``examples`` split
    over the ranks. Every rank runs ``fn`` equally often (ZeRO-3 and collectives inside ``fn``
    need it): a rank's shard is padded to the same length; padding copies are cut from their
    chunk, and a chunk of padding alone runs with weight 0."""
    shard, n_real = dist.shard_padded(list(examples))
    meter = MeanMetrics()
    for start in range(0, len(shard), batch_size):
        chunk = shard[start : start + batch_size]
        k = max(0, min(len(chunk), n_real - start))
        meter.add(fn(chunk[:k] if k else chunk), weight=k)
    return meter.pop(prefix, dist)


def evaluate_loss(
    engine: Engine, loss_fn: LossFn, examples: list[dict], batch_size: int
) -> dict[str, float]:
    """``eval/loss`` and the method's metrics on ``examples`` (eval mode, no grad, all ranks)."""
    was_training = engine.module.training
    engine.train(False)

    def one(chunk: list[dict[str, Any]]) -> dict[str, Any]:
        loss, metrics = loss_fn(chunk, False)
        return {"loss": loss, **metrics}

    out = sharded_means(engine.dist, examples, batch_size, one, prefix="eval/")
    engine.train(was_training)
    return out


def heldout_metrics(evaluator: Any, engine: Engine, tokenizer: Any) -> dict[str, float]:
    """Held-out answers scored (``rollout/heldout.py``): generated by rank 0 (ZeRO-3: by every
    rank with gathered parameters); ``{}`` when the evaluator is off."""
    if not evaluator:
        return {}
    return engine.on_main(lambda m: evaluator(m, tokenizer))


def example_tokens(example: dict[str, Any]) -> int:
    """Tokens of an encoded example (its ``*_ids`` lists; the prompt counted once)."""
    return sum(len(v) for k, v in example.items() if k.endswith("_ids"))


def fit(
    cfg: Any,
    tag: str,
    engine: Engine,
    total_steps: int,
    tokenizer: Any,
    train: list[dict[str, Any]],
    loss_fn: LossFn,
    evaluate: Callable[[], dict[str, float]],
    state: dict[str, Any],
    header: str,
) -> dict[str, Any]:
    """The visible loop: evaluate, train (accumulation, clipping, schedule), evaluate per epoch
    and every ``eval_steps``, checkpoint every ``save_steps`` (``state`` rides along), save.

    ``loss_fn(examples, training) -> (loss, metrics)`` is the method: the mean loss of its
    micro-batch (training: through ``engine.model``). Every rank runs it equally often.
    """
    dist, o = engine.dist, cfg.optim
    logger = common.start_logger(cfg, dist, total_steps)
    global_batch = o.per_device_train_batch_size * dist.world_size * o.gradient_accumulation_steps
    logger.print(
        f"[{tag}] {engine.describe()}\n[{tag}] {header}; {total_steps} optimiser steps of "
        f"{global_batch} examples"
    )
    step, epoch, skip = 0, 0, 0
    ckpt = latest_checkpoint(cfg.log.output_dir) if cfg.log.resume else None
    if ckpt is not None:
        saved = load_checkpoint(ckpt, {"model": engine})
        step, epoch, skip = saved["step"], saved["epoch"], saved["micro_in_epoch"]
        state.update(saved.get("method_state", {}))
        logger.print(f"[{tag}] resumed from {ckpt} at step {step}")
    summary: dict[str, Any] = {"train_examples": len(train)}
    merge = cfg.lora.merge_lora
    best = common.BestKeeper(
        cfg, lambda d: engine.save_hf(tokenizer, d, merge_lora=merge), logger, tag, dist
    )

    def run_eval(name: str) -> dict[str, float]:
        metrics = common.log_eval(logger, tag, name, step, evaluate())
        best.update(metrics, step)
        return metrics

    if step == 0:
        summary["before"] = common.remember_before(cfg, run_eval("before training"))
    common.recall_before(cfg, summary)  # a resumed run: the metrics before training, as measured

    # ---- train loop ----
    engine.train()
    meter, t_start, last_eval = MeanMetrics(), time.perf_counter(), -1
    tokens_seen, samples_seen = 0.0, 0.0  # global counts
    while step < total_steps:
        micro = common.rank_batches(
            train, o.per_device_train_batch_size, dist, shuffle=True, seed=o.seed + epoch
        )
        accum = o.gradient_accumulation_steps
        groups = [micro[i : i + accum] for i in range(0, len(micro), accum)]
        for gi in range(skip, len(groups)):
            # each micro-batch's mean loss, weighted by its share of the global step's examples;
            # gradients are averaged over ranks, hence x world_size
            (n_step,) = dist.all_reduce_sum([sum(len(c) for c in groups[gi])])
            loss_sum, step_tokens = 0.0, 0
            for chunk in engine.accumulate(groups[gi]):
                loss, metrics = loss_fn(chunk, True)
                engine.backward(loss * (len(chunk) * dist.world_size / n_step))
                loss_sum += float(loss.detach()) * len(chunk)
                step_tokens += sum(example_tokens(ex) for ex in chunk)
                meter.add({"loss": loss.detach(), **metrics}, weight=len(chunk))
            norm = engine.step()
            step += 1
            loss_sum, step_tokens = dist.all_reduce_sum([loss_sum, step_tokens])
            tokens_seen, samples_seen = tokens_seen + step_tokens, samples_seen + n_step
            elapsed = time.perf_counter() - t_start
            logger.progress(1, {"loss": loss_sum / n_step, "lr": engine.lr})
            if step % cfg.log.logging_steps == 0 or step == total_steps:
                logged = meter.pop("train/", dist)
                logged.update(
                    {
                        "train/lr": engine.lr,
                        "train/grad_norm": norm,
                        "train/epoch": epoch + (gi + 1) / len(groups),
                        "perf/seconds": elapsed,
                        "perf/samples_per_s": samples_seen / max(elapsed, 1e-9),
                        "perf/tokens_per_s": tokens_seen / max(elapsed, 1e-9),
                    }
                )
                logger.log(logged, step)
            if cfg.log.eval_steps and step % cfg.log.eval_steps == 0:
                summary[f"step_{step}"] = run_eval(f"step {step}")
                last_eval = step
            if cfg.log.save_steps and step % cfg.log.save_steps == 0:
                position = {"epoch": epoch, "micro_in_epoch": gi + 1, "method_state": state}
                save_checkpoint(cfg.log.output_dir, step, {"model": engine}, position)
            if step >= total_steps:
                break
        else:  # a whole epoch done
            epoch, skip = epoch + 1, 0
            summary[f"epoch_{epoch}"] = run_eval(f"epoch {epoch}")
            last_eval = step

    # ---- save ----
    elapsed = time.perf_counter() - t_start
    summary["after"] = run_eval("final") if last_eval != step else summary[list(summary)[-1]]
    summary.update(
        {
            "steps": step,
            "world_size": dist.world_size,
            "train_seconds": round(elapsed, 2),
            "samples_per_s": round(samples_seen / max(elapsed, 1e-9), 2),
            "method_state": state,
            "best": best.describe(),
        }
    )
    common.finish_engine_training(engine, tokenizer, cfg, summary, logger, tag)
    best.restore(summary)
    return summary
