"""Evaluating a policy by generating answers and scoring them (gold reward, RM, functions)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from simple_rlhf.data.tokenize import encode_prompt
from simple_rlhf.rollout.generate import SamplingArgs, decode_responses, generate

GREEDY = SamplingArgs(temperature=0.0, max_new_tokens=48)


def answer(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    sampling: SamplingArgs = GREEDY,
    seed: int | None = 0,
) -> tuple[list[str], Any]:
    """Responses (texts) to prompts (strings or chat messages) and the underlying Rollout."""
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    rollout = generate(model, tokenizer, ids, sampling, seed=seed)
    return decode_responses(tokenizer, rollout), rollout


def score_answers(
    prompts: Sequence[Any],
    responses: Sequence[str],
    reward_fn: Callable[..., list[float]],
) -> list[float]:
    scores = reward_fn(list(prompts), list(responses))
    if len(scores) != len(responses):
        raise ValueError(f"reward function returned {len(scores)} scores for {len(responses)}")
    return [float(s) for s in scores]


def evaluate_gold(
    model: Any,
    tokenizer: Any,
    *,
    n_prompts: int = 64,
    sampling: SamplingArgs = GREEDY,
    seed: int = 0,
    prefix: str = "eval",
) -> dict[str, float]:
    """Mean gold reward (tiny task) of answers to ``n_prompts`` held-out prompts, plus EOS rate and
    response length. Greedy by default; pass sampling settings for sampled answers."""
    from simple_rlhf.data.tiny_task import eval_prompts, gold_reward_batch

    prompts = eval_prompts(n_prompts, seed=seed)
    texts, rollout = answer(model, tokenizer, prompts, sampling, seed=seed)
    scores = score_answers(prompts, texts, gold_reward_batch)
    kind = "greedy" if sampling.temperature == 0 else "sampled"
    return {
        f"{prefix}/gold_{kind}": sum(scores) / len(scores),
        f"{prefix}/eos_rate_{kind}": float(rollout.has_eos.float().mean()),
        f"{prefix}/response_len_{kind}": float(rollout.response_lengths.float().mean()),
    }
