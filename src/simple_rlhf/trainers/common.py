"""Helpers every trainer composes (no base class): model setup, optimiser, schedule, batching,
timing, saving the run's config. Each trainer keeps its own visible loop."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from simple_rlhf.config import ConfigError, to_dict


def build_optimizer(model: torch.nn.Module, optim: Any, lora: Any | None = None):
    """AdamW with no weight decay on biases/norms and, with LoRA, its own learning rate."""
    from simple_rlhf.models.lora import is_lora_param

    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")
        groups.setdefault((no_decay, is_lora_param(name)), []).append(p)
    lora_lr = getattr(lora, "lora_learning_rate", None) if lora is not None else None
    params = []
    for (no_decay, is_lora), ps in groups.items():
        lr = lora_lr if (is_lora and lora_lr) else optim.learning_rate
        params.append(
            {"params": ps, "weight_decay": 0.0 if no_decay else optim.weight_decay, "lr": lr}
        )
    if not params:
        raise ValueError("the model has no trainable parameters")
    fused = getattr(optim, "optim", "adamw_torch") == "adamw_torch_fused" and fused_adamw_ok(
        [p for g in params for p in g["params"]]
    )
    return torch.optim.AdamW(
        params,
        betas=(optim.adam_beta1, optim.adam_beta2),
        eps=optim.adam_epsilon,
        **({"fused": True} if fused else {}),
    )


FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def fused_adamw_ok(params: Sequence[torch.nn.Parameter]) -> bool:
    """torch's fused AdamW kernel takes floating tensors on one CPU or CUDA device."""
    devices = {p.device.type for p in params}
    return (
        len(devices) == 1
        and devices <= {"cpu", "cuda"}
        and all(p.dtype in FUSED_DTYPES for p in params)
    )


def lr_factor(kind: str, step: int, warmup: int, total: int) -> float:
    """The learning-rate multiplier at optimiser step ``step``: a linear warm-up from 0 over
    ``warmup`` steps, then 1 (``constant_with_warmup``), a linear decay to 0 at ``total``
    (``linear``) or half a cosine down to 0 at ``total`` (``cosine``); ``constant`` is 1 from
    the start. The formulas of transformers' schedules of the same names."""
    if kind == "constant":
        return 1.0
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant_with_warmup":
        return 1.0
    rest = max(1, total - warmup)
    if kind == "linear":
        return max(0.0, (total - step) / rest)
    if kind == "cosine":
        progress = (step - warmup) / rest
        # half a cosine cycle, in the order transformers computes it (the same floats)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
    raise ConfigError(f"lr_scheduler_type: {kind!r} is not a known schedule")


def build_scheduler(optimizer: torch.optim.Optimizer, optim: Any, total_steps: int):
    """The named schedule with warm-up (``num_warmup_steps`` or ``warmup_ratio`` of the total),
    as a torch ``LambdaLR`` (built here: transformers' ``get_scheduler`` imports its Trainer
    utilities, and with them peft and bitsandbytes, ~1 s of every run's start-up)."""
    warmup = optim.num_warmup_steps or math.ceil(optim.warmup_ratio * total_steps)
    kind, total = optim.lr_scheduler_type, max(total_steps, 1)
    lr_factor(kind, 0, warmup, total)  # an unknown name fails here, before training
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, kind, warmup=warmup, total=total)
    )


def batches(
    examples: Sequence[Any], batch_size: int, *, shuffle: bool, seed: int = 0, drop_last=False
) -> Iterator[list[Any]]:
    """Mini-batches of examples; shuffled with ``seed`` (different seed per epoch)."""
    order = list(range(len(examples)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if drop_last and len(idx) < batch_size:
            return
        yield [examples[i] for i in idx]


def rank_batches(
    examples: Sequence[Any], batch_size: int, dist: Any = None, *, shuffle: bool, seed: int = 0
) -> list[list[Any]]:
    """This rank's micro-batches of one epoch: global batches of ``batch_size x world_size``
    examples (the order :func:`batches` gives with that size), each cut into the ranks' disjoint
    slices. One process: exactly ``list(batches(examples, batch_size, ...))``."""
    if dist is None or dist.world_size == 1:
        return list(batches(examples, batch_size, shuffle=shuffle, seed=seed))
    from simple_rlhf.infra.distributed import iterate_shards

    world = batches(examples, batch_size * dist.world_size, shuffle=shuffle, seed=seed)
    return list(iterate_shards(dist, world))


def steps_per_epoch(
    n_examples: int, batch_size: int, accumulation: int, world_size: int = 1
) -> int:
    """Optimiser steps per epoch: ceil(micro-batches / accumulation), where a micro-batch is
    ``batch_size x world_size`` examples and a last one smaller than the world is dropped."""
    full, rest = divmod(n_examples, batch_size * world_size)
    micro = full + (1 if rest >= world_size else 0)
    return math.ceil(micro / accumulation)


def save_run_config(output_dir: str | Path, cfg: Any, name: str = "run_config.yaml") -> None:
    import yaml

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))


class Timer:
    """Accumulates wall time per named phase: ``with timer("generate"): ...``."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._name: str | None = None

    def __call__(self, name: str) -> Timer:
        self._name = name
        return self

    def __enter__(self) -> Timer:
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._name is not None
        self.totals[self._name] = self.totals.get(self._name, 0.0) + time.perf_counter() - self._t

    def pop(self) -> dict[str, float]:
        out = {f"time/{k}_s": v for k, v in self.totals.items()}
        self.totals = {}
        return out


def replace(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` for nested frozen configs: ``replace(cfg, optim__seed=3)``."""
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for k, v in changes.items():
        if "__" in k:
            head, tail = k.split("__", 1)
            nested.setdefault(head, {})[tail] = v
        else:
            flat[k] = v
    for head, sub in nested.items():
        flat[head] = replace(getattr(cfg, head), **sub)
    return dataclasses.replace(cfg, **flat)


# ---- single-process trainer scaffolding (added for distill / rejection sampling; any trainer
# without a distributed engine can compose these instead of repeating them) --------------------


def load_run_tokenizer(model_args: Any) -> Any:
    """The run's tokenizer: ``tokenizer_name_or_path`` if set, else the model's own."""
    from simple_rlhf.models.loading import load_tokenizer

    return load_tokenizer(
        model_args.tokenizer_name_or_path or model_args.model_name_or_path,
        trust_remote_code=model_args.trust_remote_code,
    )


def load_trained_lm(
    model_args: Any,
    tokenizer: Any,
    lora: Any,
    *,
    name_or_path: str | None = None,
    dropout: float | None = None,
    apply_adapter: bool = True,
) -> Any:
    """The causal LM that trains: ``model_args`` (dtype, dropout, gradient checkpointing, remote
    code), QLoRA's ``load_in_4bit`` from the LoRA section, then the LoRA adapter (if configured).

    ``name_or_path`` overrides ``model_args.model_name_or_path``; ``dropout`` overrides
    ``model_args.dropout``; ``apply_adapter=False`` loads (4-bit if asked) without adding LoRA,
    e.g. a policy that only samples.
    """
    from simple_rlhf.models.loading import load_causal_lm
    from simple_rlhf.models.lora import apply_lora

    model = load_causal_lm(
        name_or_path or model_args.model_name_or_path,
        tokenizer,
        dtype=model_args.dtype,
        dropout=model_args.dropout if dropout is None else dropout,
        trust_remote_code=model_args.trust_remote_code,
        gradient_checkpointing=model_args.gradient_checkpointing and apply_adapter,
        load_in_4bit=bool(getattr(lora, "load_in_4bit", False)),
    )
    return apply_lora(model, lora) if apply_adapter else model


def load_frozen_lm(name_or_path: str, tokenizer: Any, model_args: Any) -> Any:
    """A frozen causal LM (teacher, reference): run dtype, dropout off, eval mode, no grads."""
    from simple_rlhf.models.loading import disable_dropout, load_causal_lm

    model = load_causal_lm(
        name_or_path,
        tokenizer,
        dtype=model_args.dtype,
        dropout=0.0,
        trust_remote_code=model_args.trust_remote_code,
    )
    disable_dropout(model)
    return model.eval().requires_grad_(False)


def fit_tiny_to_data(model_args: Any, data_args: Any, kind: str) -> Any:
    """``model_args`` with the model ``tiny`` replaced by a tiny model whose tokenizer is trained
    on the text of the run's data when that data is not the built-in tiny task (``--model-name-
    or-path tiny`` on one's own files); unchanged otherwise."""
    if model_args.model_name_or_path != "tiny" or model_args.tokenizer_name_or_path:
        return model_args
    if list(data_args.data_path) == ["tiny"]:
        return model_args
    from simple_rlhf.data.pipeline import corpus_texts
    from simple_rlhf.models.tiny import ensure_tiny

    path = ensure_tiny(corpus_texts(data_args, kind))
    return dataclasses.replace(model_args, model_name_or_path=str(path))


def heldout_evaluator(
    cfg: Any,
    tokenizer: Any,
    *,
    run_reward_funcs: Any = (),
    run_reward: Any = None,
    max_new_tokens: int | None = None,
) -> Any:
    """The run's held-out evaluator (``rollout/heldout.py``) from its ``heldout`` section."""
    from simple_rlhf.rollout.heldout import build_heldout

    return build_heldout(
        cfg.heldout,
        cfg.data,
        run_reward_funcs=run_reward_funcs,
        run_reward=run_reward,
        max_new_tokens=max_new_tokens,
        model_args=cfg.model,
    )


def heldout_metrics(engine: Any, evaluator: Any, tokenizer: Any, logger: Any) -> dict[str, float]:
    """Held-out answers of the engine's model, scored (generation on rank 0, or on every rank
    with the parameters gathered under ZeRO-3); one sample answer is printed."""
    if not evaluator:
        return {}
    return engine.on_main(lambda m: evaluator(m, tokenizer, log=logger.print))


class BestKeeper:
    """``--save-best``: at each evaluation, the model is written to ``<output_dir>/best`` when its
    held-out reward (``eval/gold_greedy``) beats every earlier one; :meth:`restore`, after the final
    save, puts those weights in the output folder instead of the last ones. ``save(folder)`` is
    the trainer's own HF save (every rank calls it)."""

    METRIC = "eval/gold_greedy"

    def __init__(self, cfg: Any, save: Any, logger: Any, tag: str, dist: Any = None) -> None:
        self.enabled = bool(getattr(cfg.heldout, "save_best", False))
        self.dist = dist
        self.folder = Path(cfg.log.output_dir) / "best"
        self.save, self.logger, self.tag = save, logger, tag
        self.best: dict[str, Any] | None = None
        if self.enabled and cfg.heldout.gold_eval_prompts <= 0:
            raise ConfigError("save_best: needs the held-out evaluation (gold_eval_prompts > 0)")

    def update(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        value = metrics.get(self.METRIC)
        if self.dist is not None and self.dist.initialized:  # rank 0's value decides, everywhere
            main = self.dist.is_main and value is not None
            total, n = self.dist.all_reduce_sum([float(value) if main else 0.0, float(main)])
            value = total if n else None
        if value is None:
            return
        if self.best is not None and value <= self.best["value"]:
            return
        self.best = {"metric": self.METRIC, "value": float(value), "step": step}
        self.save(self.folder)
        self.logger.print(f"[{self.tag}] best held-out reward so far ({value:.4f}): saved")

    def restore(self, summary: dict[str, Any]) -> None:
        """Replace the saved weights of the output folder with the best ones (rank 0 writes)."""
        import shutil

        if not self.enabled or self.best is None:
            return
        if self.dist is not None and not self.dist.is_main:
            return
        out = self.folder.parent
        for f in self.folder.iterdir():
            if f.is_file() and f.name != "summary.json":
                shutil.copy2(f, out / f.name)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.logger.print(
            f"[{self.tag}] --save-best: the saved model is the one of step {self.best['step']} "
            f"({self.METRIC} {self.best['value']:.4f})"
        )

    def describe(self) -> dict[str, Any] | None:
        return dict(self.best) if self.best else None


def log_eval(
    logger: Any, tag: str, name: str, step: int, metrics: dict[str, float]
) -> dict[str, float]:
    """Log evaluation metrics at ``step`` and print ``[tag] eval (name, step N): ...``."""
    from simple_rlhf.infra.logging import format_metrics

    logger.log(metrics, step)
    logger.print(f"[{tag}] eval ({name}, step {step}): {format_metrics(metrics)}")
    return metrics


def finish_training(
    model: Any, tokenizer: Any, cfg: Any, summary: dict[str, Any], logger: Any, tag: str
) -> dict[str, Any]:
    """Save the model (LoRA merged as configured) with ``summary.json``, print, close the
    logger; returns ``summary``."""
    from simple_rlhf.infra.checkpoint import save_hf_model

    out_dir = cfg.log.output_dir
    save_hf_model(
        model,
        tokenizer,
        out_dir,
        merge_lora=cfg.lora.merge_lora,
        extra_json={"summary.json": summary},
    )
    seconds = summary.get("train_seconds")
    took = f" ({seconds:.1f}s of training)" if isinstance(seconds, int | float) else ""
    logger.print(f"[{tag}] saved the model to {out_dir}{took}")
    logger.close()
    return summary


# ---- engine-based (distributed) trainer scaffolding: the SFT pattern of infra/distributed.py,
# added for the preference trainers; any trainer wired to an Engine can compose these ----------


def total_training_steps(optim: Any, n_examples: int, world_size: int = 1) -> int:
    """``max_steps``, else epochs x optimiser steps per epoch for global batches of
    ``per_device_train_batch_size x world_size`` examples (see :func:`steps_per_epoch`), and at
    least ``min_train_steps`` (more passes over a small data set)."""
    per_epoch = steps_per_epoch(
        n_examples, optim.per_device_train_batch_size, optim.gradient_accumulation_steps, world_size
    )
    min_steps = getattr(optim, "min_train_steps", 0)
    return optim.max_steps or max(per_epoch * optim.num_train_epochs, min_steps)


# Options a resumed run may change freely: where and how often it logs, evaluates and saves, and
# how long it runs (resuming to train longer is the usual reason to resume).
RESUME_SAFE = frozenset(
    {
        "output_dir", "eval_steps", "logging_steps", "report_to", "save_steps", "resume",
        "resume_with_changes", "progress_bar", "max_steps", "num_train_epochs", "num_rollouts",
        "max_eval_samples", "per_device_eval_batch_size", "gold_eval_prompts", "sample_every",
        "local_rank", "dist_backend", "eval_prompts", "eval_reward_funcs", "eval_reward_model",
        "pass_threshold", "eval_max_new_tokens",
    }
)  # fmt: skip


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def check_resume_config(cfg: Any) -> int | None:
    """If the run will resume (``--resume`` and a checkpoint in ``output_dir``): compare the
    options with those of the run that wrote it (``run_config.yaml``) and stop with a
    :class:`ConfigError` listing the ones that change the training, unless
    ``--resume-with-changes``. Returns the checkpoint's step (None: no resume)."""
    import yaml

    from simple_rlhf.infra.checkpoint import latest_checkpoint

    out = Path(cfg.log.output_dir)
    ckpt = latest_checkpoint(out) if cfg.log.resume else None
    if ckpt is None:
        return None
    step = int(json.loads((ckpt / "state.json").read_text()).get("step", 0))
    saved_file = out / "run_config.yaml"
    if not saved_file.is_file() or cfg.log.resume_with_changes:
        return step
    try:
        saved = _flat(yaml.safe_load(saved_file.read_text()) or {})
    except yaml.YAMLError:
        return step
    now = _flat(to_dict(cfg))
    changed = [
        f"{k}: {saved[k]!r} -> {now[k]!r}"
        for k in now
        if k in saved and saved[k] != now[k] and k.rsplit(".", 1)[-1] not in RESUME_SAFE
    ]
    if changed:
        raise ConfigError(
            f"{out} holds a checkpoint ({ckpt.name}) of a run with other settings; resuming "
            "would continue it with these changed options: " + "; ".join(changed) + ". Run with "
            "the same values, or add --resume-with-changes to go on with the new ones, or "
            "start afresh with --no-resume or another --output-dir."
        )
    return step


BEFORE_FILE = "before.json"  # in <output_dir>/checkpoints: the metrics before training


def remember_before(cfg: Any, metrics: dict[str, float]) -> dict[str, float]:
    """Keep the held-out metrics measured before training beside the checkpoints, so that a
    resumed run's summary still has them (:func:`recall_before`); returns ``metrics``."""
    import os

    from simple_rlhf.infra.checkpoint import CHECKPOINTS

    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return metrics  # rank 0 writes (other ranks may hold only part of the metrics)
    folder = Path(cfg.log.output_dir) / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{BEFORE_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, folder / BEFORE_FILE)
    return metrics


def recall_before(cfg: Any, summary: dict[str, Any]) -> None:
    """``summary["before"]`` from :func:`remember_before`'s file when the run resumed."""
    from simple_rlhf.infra.checkpoint import CHECKPOINTS

    path = Path(cfg.log.output_dir) / CHECKPOINTS / BEFORE_FILE
    if "before" not in summary and path.is_file():
        summary["before"] = json.loads(path.read_text())


def start_logger(cfg: Any, dist: Any, total_steps: int) -> Any:
    """The metrics logger of a (possibly distributed) run: it writes and prints on rank 0 only,
    which also saves the run config. A run that will resume is checked first
    (:func:`check_resume_config`), and its ``metrics.jsonl`` loses the rows logged after the
    checkpoint by the run that stopped (they are logged again)."""
    from simple_rlhf.infra.logging import MetricsLogger

    log = cfg.log
    resume_step = check_resume_config(cfg)  # every rank: each stops alike
    logger = MetricsLogger(
        log.output_dir,
        log.report_to,
        total_steps=total_steps,
        progress_bar=log.progress_bar,
        enabled=dist.is_main,
        keep_until=resume_step,
    )
    if dist.is_main:
        save_run_config(log.output_dir, cfg)
    return logger


def finish_engine_training(
    engine: Any, tokenizer: Any, cfg: Any, summary: dict[str, Any], logger: Any, tag: str
) -> dict[str, Any]:
    """:func:`finish_training` for an ``infra.distributed.Engine``: every rank calls it; rank 0
    writes the HF folder (gathered under ZeRO-3, LoRA merged as configured) with summary.json."""
    engine.save_hf(
        tokenizer,
        cfg.log.output_dir,
        merge_lora=cfg.lora.merge_lora,
        extra_json={"summary.json": summary},
    )
    logger.print(f"[{tag}] saved the model and summary.json to {cfg.log.output_dir}")
    logger.close()
    return summary


def load_base_lm(model_args: Any, tokenizer: Any, *, load_in_4bit: bool = False) -> Any:
    """The causal LM a trainer will train, before any adapter: ``model_args`` (dtype, dropout,
    gradient checkpointing, remote code) and QLoRA's 4-bit base if asked. Load it inside
    ``plan.loading()`` and add LoRA afterwards (``models.lora.apply_lora``), so the adapter's
    initialisation does not depend on how the load (e.g. ZeRO-3's partitioning) used the RNG."""
    from simple_rlhf.models.loading import load_causal_lm

    return load_causal_lm(
        model_args.model_name_or_path,
        tokenizer,
        dtype=model_args.dtype,
        dropout=model_args.dropout,
        trust_remote_code=model_args.trust_remote_code,
        gradient_checkpointing=model_args.gradient_checkpointing,
        load_in_4bit=load_in_4bit,
    )
