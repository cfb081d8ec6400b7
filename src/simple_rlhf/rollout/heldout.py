"""Held-out evaluation by generation, on any data: answer held-out prompts, score the answers.

Every trainer that produces a policy builds one :class:`HeldoutEvaluator` from its ``heldout``
section (``config.HeldoutArgs``) and calls it before training, at each evaluation and at the end.
The metrics (``kind`` is ``greedy``, or ``sampled`` when sampling settings are passed):

* ``eval/gold_<kind>``: mean *evaluation reward* of the answers: the mean over the evaluation
  reward functions (``--eval-reward-funcs``; by default the run's own ``--reward-funcs``, or
  ``tiny_gold`` on the tiny task), each ``eval/gold_<name>_<kind>`` when there are several;
* ``eval/pass_rate_<kind>``: share of answers whose evaluation reward is ``>= pass_threshold``;
* ``eval/rm_<kind>``: mean score of ``--eval-reward-model`` (normalised as in PPO);
* ``eval/reward_<kind>``: the run's own reward (an RL trainer passes it), e.g. its RM;
* ``eval/eos_rate_<kind>``, ``eval/response_len_<kind>``: answers that ended, and their length.

With no reward function (SFT / DPO on the user's data without ``--eval-reward-funcs``) only the
last two are measured, and :meth:`HeldoutEvaluator.describe` says how to add a reward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from simple_rlhf.data.heldout import HeldoutSet, heldout_prompts
from simple_rlhf.rollout.evaluate import GREEDY, answer
from simple_rlhf.rollout.generate import SamplingArgs
from simple_rlhf.rollout.rewards import (
    RewardFn,
    RewardModelSource,
    call_reward,
    named_functions,
)

TINY_REWARD = "tiny_gold"
DEFAULT_MAX_NEW_TOKENS = 64


@dataclasses.dataclass
class HeldoutEvaluator:
    """Held-out prompts plus the sources that score answers to them (see the module docstring)."""

    prompts: HeldoutSet
    functions: list[tuple[str, RewardFn]]
    reward_model: RewardModelSource | None = None
    run_reward: Callable[..., Sequence[float]] | None = None
    pass_threshold: float = 1.0
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    shown: int = 1  # sample answers printed per evaluation

    def __bool__(self) -> bool:
        return len(self.prompts) > 0

    def describe(self) -> str:
        if not self:
            return "held-out evaluation: off"
        names = ", ".join(n for n, _ in self.functions) or "none"
        text = (
            f"held-out evaluation: {len(self.prompts)} prompts from {self.prompts.source}, "
            f"answered greedily (up to {self.max_new_tokens} tokens), scored by {names}"
        )
        if self.reward_model is not None:
            text += f" and the reward model {self.reward_model.path}"
        if not self.functions:
            text += (
                " (no reward function: only EOS rate and length are measured; pass "
                "--eval-reward-funcs file.py:function to see the reward move)"
            )
        return text

    def __call__(
        self,
        model: Any,
        tokenizer: Any,
        sampling: SamplingArgs | None = None,
        seed: int = 0,
        log: Callable[[str], None] | None = None,
        prefix: str = "eval",
    ) -> dict[str, float]:
        """Metrics of greedy answers (or sampled ones with ``sampling``), named
        ``<prefix>/...``."""
        if not self:
            return {}
        kind = "greedy" if sampling is None or sampling.temperature == 0 else "sampled"
        s = sampling or dataclasses.replace(GREEDY, max_new_tokens=self.max_new_tokens)
        prompts = self.prompts.prompts
        texts, rollout = answer(model, tokenizer, prompts, s, seed=seed)
        columns = self.prompts.columns()
        out: dict[str, float] = {}
        totals = [0.0] * len(texts)
        for name, fn in self.functions:
            scores = call_reward(name, fn, prompts, texts, **columns)
            totals = [t + x / len(self.functions) for t, x in zip(totals, scores, strict=True)]
            if len(self.functions) > 1:
                out[f"{prefix}/gold_{name}_{kind}"] = sum(scores) / len(scores)
        if self.functions:
            out[f"{prefix}/gold_{kind}"] = sum(totals) / len(totals)
            passed = sum(t >= self.pass_threshold - 1e-9 for t in totals)
            out[f"{prefix}/pass_rate_{kind}"] = passed / len(totals)
        if self.reward_model is not None:
            rm = self.reward_model(prompts, texts)
            out[f"{prefix}/rm_{kind}"] = sum(rm) / len(rm)
        if self.run_reward is not None:
            own = list(self.run_reward(prompts, texts, **columns))
            out[f"{prefix}/reward_{kind}"] = sum(own) / len(own)
        out[f"{prefix}/eos_rate_{kind}"] = float(rollout.has_eos.float().mean())
        out[f"{prefix}/response_len_{kind}"] = float(rollout.response_lengths.float().mean())
        if log is not None:
            for i in range(min(self.shown, len(texts))):
                score = f" (reward {totals[i]:.3f})" if self.functions else ""
                log(f"  [held-out] {_short(prompts[i])!r} -> {texts[i]!r}{score}")
        return out


def _short(prompt: Any, n: int = 80) -> str:
    text = prompt[-1]["content"] if isinstance(prompt, list) and prompt else str(prompt)
    return text if len(text) <= n else text[: n - 3] + "..."


def build_heldout(
    heldout: Any,
    data_args: Any,
    *,
    run_reward_funcs: Sequence[Any] = (),
    run_reward: Callable[..., Sequence[float]] | None = None,
    max_new_tokens: int | None = None,
    model_args: Any = None,
) -> HeldoutEvaluator:
    """The evaluator a trainer's ``heldout`` section asks for (empty when
    ``gold_eval_prompts`` is 0 or there are no held-out prompts)."""
    funcs = list(heldout.eval_reward_funcs)
    if not heldout.eval_reward_funcs:  # default: the run's own functions, or tiny_gold on tiny
        funcs = list(run_reward_funcs)
        if not funcs and list(data_args.data_path) == ["tiny"]:
            funcs = [TINY_REWARD]
    functions = named_functions(funcs)
    prompts = heldout_prompts(heldout.eval_prompts, data_args, heldout.gold_eval_prompts)
    rm = None
    if heldout.eval_reward_model and len(prompts):
        rm = RewardModelSource(
            heldout.eval_reward_model,
            dtype=getattr(model_args, "dtype", "float32"),
            trust_remote_code=getattr(model_args, "trust_remote_code", False),
        )
    return HeldoutEvaluator(
        prompts,
        functions,
        rm,
        run_reward,
        heldout.pass_threshold,
        heldout.eval_max_new_tokens or max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
    )


NEAR_CHANCE = (
    0.6  # on-policy pair accuracy below this: the scorer barely orders the policy's answers
)


def policy_pair_accuracy(
    evaluator: HeldoutEvaluator,
    policy: Any,
    tokenizer: Any,
    score: Callable[[list[Any], list[str]], Sequence[float]],
    *,
    samples: int = 4,
    sampling: SamplingArgs | None = None,
    seed: int = 0,
    prefix: str = "eval",
) -> dict[str, float]:
    """How well ``score`` (e.g. a reward model) orders the policy's *own* answers: ``samples``
    sampled answers per held-out prompt, every pair of answers to one prompt whose evaluation
    reward differs, and the share of those pairs ``score`` orders the same way
    (``<prefix>/policy_pairs_accuracy``; 0.5 is chance) and their number. Pairs of a preference
    data set can be easy for a reward model while the policy's own answers, which differ in
    subtler ways, are not: then PPO on that reward model has nothing to climb. ``{}`` without
    evaluation reward functions."""
    if not evaluator or not evaluator.functions:
        return {}
    s = sampling or SamplingArgs(temperature=1.0, max_new_tokens=evaluator.max_new_tokens)
    prompts = [p for p in evaluator.prompts.prompts for _ in range(samples)]
    rows = [i for i in range(len(evaluator.prompts)) for _ in range(samples)]
    texts, _ = answer(policy, tokenizer, prompts, s, seed=seed)
    columns = evaluator.prompts.columns(rows)
    gold = [0.0] * len(texts)
    for name, fn in evaluator.functions:
        got = call_reward(name, fn, prompts, texts, **columns)
        gold = [g + x / len(evaluator.functions) for g, x in zip(gold, got, strict=True)]
    scores = list(score(prompts, texts))
    agree = total = 0
    for start in range(0, len(texts), samples):
        for i in range(start, start + samples):
            for j in range(i + 1, start + samples):
                if abs(gold[i] - gold[j]) < 1e-9:
                    continue
                total += 1
                agree += (gold[i] > gold[j]) == (scores[i] > scores[j])
    out = {f"{prefix}/policy_pairs": float(total)}
    if total:
        out[f"{prefix}/policy_pairs_accuracy"] = agree / total
    return out


def near_chance_warning(metrics: dict[str, float], prefix: str = "eval") -> str | None:
    """A warning when the on-policy pair accuracy is near chance (or unmeasurable)."""
    n = int(metrics.get(f"{prefix}/policy_pairs", -1))
    acc = metrics.get(f"{prefix}/policy_pairs_accuracy")
    if n == 0:
        return (
            "every sampled answer to each held-out prompt got the same evaluation reward: the "
            "reward model's ordering of the policy's own answers cannot be measured"
        )
    if acc is not None and acc < NEAR_CHANCE:
        return (
            f"the reward model orders pairs of the policy's own sampled answers correctly only "
            f"{acc:.0%} of the time ({n} pairs; 50% is chance): PPO with it has little to climb "
            "and may not improve the policy. More or cleaner preference pairs, pairs sampled "
            "from this policy, or training longer usually help; a reward function, where one "
            "exists, can be used directly (grpo --reward-funcs)"
        )
    return None
