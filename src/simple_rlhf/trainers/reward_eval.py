"""Held-out evaluation of a reward model: pair accuracy and margins, agreement with the tiny
task's gold reward (Spearman, gold-order accuracy), and the score statistics stored with the model
for normalisation. Used by ``simple-rlhf reward`` (trainers/reward.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from simple_rlhf.data.tokenize import collate_pairs
from simple_rlhf.infra.distributed import Dist
from simple_rlhf.models.reward import sequence_scores
from simple_rlhf.trainers import common


def pair_batch(examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``attention_mask`` / ``response_mask`` (the response tokens) ``[2B, T]``,
    right-padded, chosen rows first."""
    b = collate_pairs(examples, pad_id)
    response_mask = (b["labels"] != -100).long()
    return {
        "input_ids": b["input_ids"],
        "attention_mask": b["attention_mask"],
        "response_mask": response_mask,
    }


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
    dist: Dist | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw scores of the chosen and rejected responses ``([N], [N])`` (eval mode, no grad).

    ``max_batches`` keeps the first ``max_batches x batch_size`` pairs. With several ranks each
    scores an equal slice (:meth:`Dist.shard_padded`: same forwards on every rank, as ZeRO-3
    needs) and the real scores are gathered in order, so every rank returns all ``N``.
    """
    if max_batches is not None:
        examples = examples[: max_batches * batch_size]
    n_real = len(examples)
    if dist is not None:
        examples, n_real = dist.shard_padded(examples)
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for chunk in common.batches(examples, batch_size, shuffle=False):
        b = pair_batch(chunk, pad_id)
        if dist is not None:
            b = dist.to_device(b)
        c, r = sequence_scores(
            model, b["input_ids"], b["attention_mask"], b["response_mask"]
        ).chunk(2)
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    model.train(was_training)
    c = torch.cat(chosen)[:n_real] if chosen else torch.zeros(0)
    r = torch.cat(rejected)[:n_real] if rejected else torch.zeros(0)
    if dist is not None and dist.initialized and dist.world_size > 1:
        parts: list[Any] = [None] * dist.world_size
        torch.distributed.all_gather_object(parts, (c, r))
        c, r = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return c, r


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
    dist: Dist | None = None,
) -> dict[str, Any]:
    """Mean and (population) std of the raw scores of the reference responses."""
    chosen, rejected = score_examples(model, examples, batch_size, pad_id, dist=dist)
    scores = torch.cat([chosen, rejected]) if which == "eval_all" else chosen
    scores = scores.double()
    return {
        "mean": float(scores.mean()),
        "std": float(scores.std(unbiased=False)),
        "n": int(scores.numel()),
        "reference": which,
    }
