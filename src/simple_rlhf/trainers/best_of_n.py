"""Best-of-N selection and the records it writes (``trainers/rejection_sampling.py``): the best
and worst sample of each prompt among the valid ones, SFT records in the data layer's format
(conversational when the prompt is messages), preference pairs, and an atomic JSONL writer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from simple_rlhf.rollout.rewards import CombinedReward


def select_best_worst(
    scores: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best and worst sample of each prompt among the valid ones.

    Args:
        scores: ``[n_prompts, N]``.
        valid: ``[n_prompts, N]`` bool (e.g. ended with EOS).
    Returns:
        ``best [n]`` (argmax, first on ties), ``worst [n]`` (argmin, first on ties),
        ``has_valid [n]`` (rows with no valid sample must be skipped).
    """
    neg = torch.full_like(scores, float("-inf"))
    pos = torch.full_like(scores, float("inf"))
    best = torch.where(valid, scores, neg).argmax(dim=1)
    worst = torch.where(valid, scores, pos).argmin(dim=1)
    return best, worst, valid.any(dim=1)


def sft_record(prompt: Any, response: str, score: float) -> dict[str, Any]:
    """One SFT record in the data layer's format (conversational when the prompt is messages)."""
    if isinstance(prompt, list):
        return {"messages": [*prompt, {"role": "assistant", "content": response}], "score": score}
    return {"prompt": prompt, "response": response, "score": score}


def pair_record(prompt: Any, chosen: str, rejected: str, scores: Sequence[float]) -> dict:
    if isinstance(prompt, list):
        chosen_r: Any = [{"role": "assistant", "content": chosen}]
        rejected_r: Any = [{"role": "assistant", "content": rejected}]
    else:
        chosen_r, rejected_r = chosen, rejected
    return {
        "prompt": prompt,
        "chosen": chosen_r,
        "rejected": rejected_r,
        "chosen_score": scores[0],
        "rejected_score": scores[1],
    }


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place, so an interrupted
    run never leaves a half-written file where a resumed one would read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows atomically, one JSON object per line."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def select(
    prompts: Sequence[dict[str, Any]], samples: Sequence[dict[str, Any]], rs: Any
) -> tuple[list[dict], list[dict], dict[str, float]]:
    """Keep the best (and worst) sample of each prompt (records of
    ``rejection_sampling.sample_chunks``; ``rs`` a ``RejectionSamplingArgs``: ``require_eos``,
    ``min_score``, ``keep_worst``).

    Returns ``(sft_rows, pair_rows, metrics)``.
    """
    scores = torch.tensor([s["scores"] for s in samples])  # [n, N]
    has_eos = torch.tensor([s["eos"] for s in samples], dtype=torch.bool)  # [n, N]
    valid = has_eos if rs.require_eos else torch.ones_like(has_eos)
    best, worst, has_valid = select_best_worst(scores, valid)
    sft_rows, pair_rows, kept_scores, worst_scores = [], [], [], []
    for i, (p, s) in enumerate(zip(prompts, samples, strict=True)):
        if not has_valid[i]:
            continue
        b, w = int(best[i]), int(worst[i])
        s_best, s_worst = float(scores[i, b]), float(scores[i, w])
        if rs.min_score is not None and s_best < rs.min_score:
            continue
        sft_rows.append(sft_record(p["prompt"], s["texts"][b], s_best))
        kept_scores.append(s_best)
        worst_scores.append(s_worst)
        if rs.keep_worst and s_best > s_worst:
            pair_rows.append(
                pair_record(p["prompt"], s["texts"][b], s["texts"][w], (s_best, s_worst))
            )
    per_source: dict[str, list[float]] = {}
    for s in samples:
        for name, v in s["sources"].items():
            per_source.setdefault(name, []).extend(v)
    lengths = [x for s in samples for x in s["lengths"]]
    return (
        sft_rows,
        pair_rows,
        {
            "rs/score_mean": float(scores.mean()),
            "rs/best_of_n_score": float(scores.max(dim=1).values.mean()),
            "rs/kept_score_mean": sum(kept_scores) / max(len(kept_scores), 1),
            "rs/worst_score_mean": sum(worst_scores) / max(len(worst_scores), 1),
            "rs/kept": float(len(sft_rows)),
            "rs/pairs": float(len(pair_rows)),
            "rollout/eos_rate": float(has_eos.float().mean()),
            "rollout/response_len": sum(lengths) / max(len(lengths), 1),
            **CombinedReward.metrics(per_source),
        },
    )
