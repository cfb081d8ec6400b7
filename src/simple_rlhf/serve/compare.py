"""Answers of two or more models side by side (``simple-rlhf eval``), scored on your task.

For a set of prompts — built-in English and Chinese ones (held-out tiny-task prompts plus a few
open questions), or your own file — each model answers (greedy by default, or sampled). Each
prompt is rendered as the model was trained to see it (its stored prompt format: a chat-trained
model gets plain-string prompts as user messages, a plain-text-trained one gets them as they
are). Answers are scored by ``--reward-funcs`` (your ``file.py:function``; the file's extra
columns, e.g. a reference ``answer``, are passed to it; on the built-in prompts the tiny task's
gold reward) and by ``--reward-model``. Printed as a table with a per-model summary (mean reward,
pass rate, EOS rate), written as JSONL with ``--output-jsonl``.

    simple-rlhf eval --models tiny outputs/sft --n-prompts 6
    simple-rlhf eval --models outputs/sft outputs/grpo --prompts-file heldout.jsonl \
        --reward-funcs reward.py:reward
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from simple_rlhf.config import ConfigError, fld

OPEN_PROMPTS = ["Hello! Who are you?", "你好！请介绍一下你自己。"]


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Compare models' answers on a prompt set."""

    models: list[str] = fld(["tiny"], "model folders or Hub names to compare (one or more)")
    prompts_file: str | None = fld(
        None,
        "prompts: .txt (one per line) or a data file (JSONL/JSON/CSV/parquet) with a 'prompt' "
        "(string or messages) or 'messages' field; other columns go to the reward functions "
        "(default: built-in)",
    )
    n_prompts: int = fld(
        8,
        "how many prompts: built-in held-out tiny-task prompts (EN and ZH), or "
        "the first N of --prompts-file (0: all of the file)",
    )
    reward_funcs: list[str] = fld(
        [],
        "reward functions scoring each answer: 'file.py:function', 'module:function' or a "
        "built-in name (default on the built-in prompts: tiny_gold)",
    )
    pass_threshold: float = fld(1.0, "an answer passes when its reward is >= this")
    reward_model: str | None = fld(None, "a reward model folder to score answers with")
    temperature: float = fld(0.0, "0 = greedy; otherwise sampled with this temperature")
    max_new_tokens: int = fld(64, "maximum tokens per answer")
    seed: int = fld(0, "sampling seed")
    output_jsonl: str | None = fld(None, "also write one JSON line per prompt and model here")
    trust_remote_code: bool = fld(False, "allow custom modelling code of Hub models")

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("models: give at least one model")


def load_prompts(cfg: CompareConfig) -> tuple[list[Any], dict[str, list[Any]]]:
    """Prompts (strings or chat messages) and their extra columns (keyword lists)."""
    if cfg.prompts_file is None:
        from simple_rlhf.data.tiny_task import eval_prompts

        prompts = eval_prompts(cfg.n_prompts, seed=cfg.seed) + [
            [{"role": "user", "content": p}] for p in OPEN_PROMPTS
        ]
        return prompts, {}
    path = Path(cfg.prompts_file)
    if not path.exists():
        raise ConfigError(f"prompts_file: {path} not found")
    limit = cfg.n_prompts if cfg.n_prompts > 0 else 10**9
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [ln.strip() for ln in lines if ln.strip()][:limit], {}
    from simple_rlhf.data.heldout import heldout_prompts

    held = heldout_prompts(str(path), None, limit)
    return held.prompts, held.columns()


def _user_text(prompt: Any) -> str:
    from simple_rlhf.data.tiny_task import prompt_text

    return prompt_text(prompt)


def _reward_functions(cfg: CompareConfig) -> list[tuple[str, Any]]:
    from simple_rlhf.rollout.rewards import named_functions

    funcs = list(cfg.reward_funcs) or (["tiny_gold"] if cfg.prompts_file is None else [])
    return named_functions(funcs)


def run(cfg: CompareConfig) -> list[dict[str, Any]]:
    """Generate, score, print the table; return the rows."""
    from simple_rlhf.data.tiny_task import parse_prompt
    from simple_rlhf.models.loading import load_causal_lm, load_tokenizer
    from simple_rlhf.rollout.evaluate import answer
    from simple_rlhf.rollout.generate import SamplingArgs
    from simple_rlhf.rollout.rewards import call_reward

    functions = _reward_functions(cfg)  # loaded (and checked) before any model
    prompts, columns = load_prompts(cfg)
    if not prompts:
        raise ConfigError(f"prompts_file: {cfg.prompts_file} has no prompts")
    sampling = SamplingArgs(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    answers: dict[str, list[str]] = {}
    eos: dict[str, list[bool]] = {}
    for name in cfg.models:
        tok = load_tokenizer(name, trust_remote_code=cfg.trust_remote_code, padding_side="left")
        model = load_causal_lm(name, tok, trust_remote_code=cfg.trust_remote_code)
        answers[name], rollout = answer(model, tok, prompts, sampling, seed=cfg.seed)
        eos[name] = rollout.has_eos.tolist()
    rewards: dict[str, list[float | None]] = {}
    for name in cfg.models:
        if not functions:
            continue
        if cfg.prompts_file is None:  # built-in set: the tiny gold scores only its own prompts
            idx = [i for i, p in enumerate(prompts) if parse_prompt(p) is not None]
        else:
            idx = list(range(len(prompts)))
        mine: list[float | None] = [None] * len(prompts)
        cols = {k: [v[i] for i in idx] for k, v in columns.items()}
        for fname, fn in functions:
            got = call_reward(fname, fn, [prompts[i] for i in idx], [answers[name][i] for i in idx],
                              **cols)  # fmt: skip
            for i, x in zip(idx, got, strict=True):
                mine[i] = (mine[i] or 0.0) + x / len(functions)
        rewards[name] = mine
    rm_scores: dict[str, list[float]] = {}
    if cfg.reward_model:
        from simple_rlhf.models.reward import RewardScorer

        scorer = RewardScorer.load(cfg.reward_model, trust_remote_code=cfg.trust_remote_code)
        for name in cfg.models:
            rm_scores[name] = scorer.score(prompts, answers[name])
    rows = []
    for i, p in enumerate(prompts):
        for name in cfg.models:
            row = {"prompt": _user_text(p), "model": name, "response": answers[name][i]}
            row["eos"] = eos[name][i]
            if name in rewards and rewards[name][i] is not None:
                row["reward"] = rewards[name][i]
            if name in rm_scores:
                row["rm_score"] = rm_scores[name][i]
            rows.append(row)
    print(format_table(rows, cfg.models, cfg.pass_threshold))
    if cfg.output_jsonl:
        out = Path(cfg.output_jsonl)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


def format_table(rows: list[dict[str, Any]], models: list[str], pass_threshold: float = 1.0) -> str:
    """A readable side-by-side listing and a per-model summary."""
    lines = []
    width = max(len(m) for m in models)
    current = None
    for r in rows:
        if r["prompt"] != current:
            current = r["prompt"]
            lines.append(f"\n> {current}")
        scores = []
        if "reward" in r:
            scores.append(f"reward={r['reward']:.2f}")
        if "rm_score" in r:
            scores.append(f"rm={r['rm_score']:+.2f}")
        tag = f"[{', '.join(scores)}]" if scores else ""
        lines.append(f"  {r['model']:<{width}} {tag:<22} {r['response']}")
    lines.append("\nsummary:")
    for m in models:
        mine = [r for r in rows if r["model"] == m]
        reward = [r["reward"] for r in mine if "reward" in r]
        rm = [r["rm_score"] for r in mine if "rm_score" in r]
        parts = [f"{m:<{width}}"]
        if reward:
            passed = sum(x >= pass_threshold - 1e-9 for x in reward) / len(reward)
            parts.append(
                f"mean reward {sum(reward) / len(reward):.3f}, pass rate {passed:.3f} "
                f"over {len(reward)} prompts"
            )
        if rm:
            parts.append(f"mean RM score {sum(rm) / len(rm):+.3f}")
        parts.append(f"EOS rate {sum(bool(r.get('eos')) for r in mine) / max(len(mine), 1):.3f}")
        lines.append("  " + "  ".join(parts))
    return "\n".join(lines)
