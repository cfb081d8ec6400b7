"""Answers of two or more models side by side (``simple-rlhf eval``).

For a set of prompts — built-in English and Chinese ones (held-out tiny-task prompts plus a few
open questions), or your own file — each model answers (greedy by default, or sampled); answers are
scored with the tiny task's gold reward where the prompt belongs to it, and with a reward model when
``--reward-model`` is given. Printed as a table, written as JSONL with ``--output-jsonl``.

    simple-rlhf eval --models tiny outputs/sft --n-prompts 6
    simple-rlhf eval --models outputs/sft outputs/ppo --reward-model outputs/reward --prompts-file q.txt
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
        None, "prompts: .txt (one per line), .json/.jsonl with a 'prompt' field (default: built-in)"
    )
    n_prompts: int = fld(8, "built-in prompts: how many held-out tiny-task prompts (EN and ZH)")
    reward_model: str | None = fld(None, "a reward model folder to score answers with")
    temperature: float = fld(0.0, "0 = greedy; otherwise sampled with this temperature")
    max_new_tokens: int = fld(48, "maximum tokens per answer")
    seed: int = fld(0, "sampling seed")
    output_jsonl: str | None = fld(None, "also write one JSON line per prompt and model here")
    trust_remote_code: bool = fld(False, "allow custom modelling code of Hub models")

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("models: give at least one model")


def load_prompts(cfg: CompareConfig) -> list[Any]:
    """Prompts as strings or chat messages."""
    if cfg.prompts_file is None:
        from simple_rlhf.data.tiny_task import eval_prompts

        return eval_prompts(cfg.n_prompts, seed=cfg.seed) + [
            [{"role": "user", "content": p}] for p in OPEN_PROMPTS
        ]
    path = Path(cfg.prompts_file)
    if not path.is_file():
        raise ConfigError(f"prompts_file: {path} not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        return [[{"role": "user", "content": ln.strip()}] for ln in text.splitlines() if ln.strip()]
    rows = (
        json.loads(text)
        if path.suffix == ".json"
        else [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    )
    prompts = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "prompt" not in row:
            raise ConfigError(f"{path}, record {i}, field 'prompt': missing")
        p = row["prompt"]
        prompts.append([{"role": "user", "content": p}] if isinstance(p, str) else p)
    return prompts


def _user_text(prompt: Any) -> str:
    from simple_rlhf.data.tiny_task import prompt_text

    return prompt_text(prompt)


def run(cfg: CompareConfig) -> list[dict[str, Any]]:
    """Generate, score, print the table; return the rows."""
    from simple_rlhf.data.tiny_task import gold_reward, parse_prompt
    from simple_rlhf.models.loading import load_causal_lm, load_tokenizer
    from simple_rlhf.rollout.evaluate import answer
    from simple_rlhf.rollout.generate import SamplingArgs

    prompts = load_prompts(cfg)
    sampling = SamplingArgs(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    answers: dict[str, list[str]] = {}
    for name in cfg.models:
        tok = load_tokenizer(name, trust_remote_code=cfg.trust_remote_code, padding_side="left")
        model = load_causal_lm(name, tok, trust_remote_code=cfg.trust_remote_code)
        answers[name], _ = answer(model, tok, prompts, sampling, seed=cfg.seed)
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
            if parse_prompt(p) is not None:
                row["gold"] = gold_reward(p, answers[name][i])
            if name in rm_scores:
                row["rm_score"] = rm_scores[name][i]
            rows.append(row)
    print(format_table(rows, cfg.models))
    if cfg.output_jsonl:
        out = Path(cfg.output_jsonl)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


def format_table(rows: list[dict[str, Any]], models: list[str]) -> str:
    """A readable side-by-side listing and a per-model summary."""
    lines = []
    width = max(len(m) for m in models)
    current = None
    for r in rows:
        if r["prompt"] != current:
            current = r["prompt"]
            lines.append(f"\n> {current}")
        scores = []
        if "gold" in r:
            scores.append(f"gold={r['gold']:.2f}")
        if "rm_score" in r:
            scores.append(f"rm={r['rm_score']:+.2f}")
        tag = f"[{', '.join(scores)}]" if scores else ""
        lines.append(f"  {r['model']:<{width}} {tag:<22} {r['response']}")
    lines.append("\nsummary:")
    for m in models:
        mine = [r for r in rows if r["model"] == m]
        gold = [r["gold"] for r in mine if "gold" in r]
        rm = [r["rm_score"] for r in mine if "rm_score" in r]
        parts = [f"{m:<{width}}"]
        if gold:
            parts.append(f"mean gold {sum(gold) / len(gold):.3f} over {len(gold)} task prompts")
        if rm:
            parts.append(f"mean RM score {sum(rm) / len(rm):+.3f}")
        lines.append("  " + "  ".join(parts))
    return "\n".join(lines)
