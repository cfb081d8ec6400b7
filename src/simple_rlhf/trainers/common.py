"""Helpers every trainer composes (no base class): model setup, optimiser, schedule, batching,
timing, saving the run's config. Each trainer keeps its own visible loop."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from simple_rlhf.config import to_dict


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
    return torch.optim.AdamW(
        params, betas=(optim.adam_beta1, optim.adam_beta2), eps=optim.adam_epsilon
    )


def build_scheduler(optimizer: torch.optim.Optimizer, optim: Any, total_steps: int):
    """The named schedule with warm-up (``num_warmup_steps`` or ``warmup_ratio`` of the total)."""
    from transformers import get_scheduler

    warmup = optim.num_warmup_steps or math.ceil(optim.warmup_ratio * total_steps)
    return get_scheduler(
        optim.lr_scheduler_type,
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=max(total_steps, 1),
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


def grad_norm(model: torch.nn.Module, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm and max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.norm(torch.stack([p.grad.detach().norm() for p in params])))


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
