"""Score prompt/response pairs with a reward model, or compare two answers (``simple-rlhf score``).

A response's score is the RM's raw score ``r`` read at its last real token, normalised with the mean
and std stored beside the model (``reward_stats.json``: ``(r - mean) / std``; ``--no-normalize``
prints raw scores). With a second answer the command also says which one the RM prefers and with
what Bradley–Terry probability ``P(A > B) = σ(r_A - r_B)`` (computed from the raw scores, the scale
the RM was trained on). A prompt given as a string is wrapped as one user message and rendered with
the tokenizer's chat template, as the data layer does for conversational data (``--raw-prompt``
uses the text as it is, for transcript-style data like ``"Human: … Assistant:"``).

    simple-rlhf score --reward-model outputs/reward \\
        --prompt "What color is each of these: apple, sky?" \\
        --response "apple is red. sky is blue." --response2 "apple is red. sky is green."
    simple-rlhf score --reward-model outputs/reward --prompt "说出这些东西的颜色：苹果。" \\
        --response "苹果是红色。"
    simple-rlhf score --reward-model outputs/reward --input-file pairs.jsonl --output-jsonl out.jsonl

An input file is JSON lines (or a JSON list) of ``{"prompt", "response"}`` records, optionally with
``"response2"`` to compare; ``{"prompt", "chosen", "rejected"}`` records compare chosen (A) with
rejected (B). Prompts may be strings or chat messages.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from simple_rlhf.config import ConfigError, fld


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """Score answers with a reward model."""

    reward_model: str = fld("outputs/reward", "reward model folder (from `simple-rlhf reward`)")
    prompt: str | None = fld(None, "a prompt to score answers to (with --response)")
    response: str | None = fld(None, "the answer to score")
    response2: str | None = fld(None, "a second answer to the same prompt, compared with the first")
    input_file: str | None = fld(
        None,
        "a .jsonl/.json file of {prompt, response[, response2]} or {prompt, chosen, rejected} "
        "records (instead of --prompt/--response)",
    )
    raw_prompt: bool = fld(False, "use prompt strings as they are (no chat template)")
    normalize: bool = fld(True, "normalise with the mean/std stored with the model (if any)")
    clip: float | None = fld(None, "clip normalised scores to [-clip, clip]")
    batch_size: int = fld(32, "sequences per forward pass")
    output_jsonl: str | None = fld(None, "also write one JSON line per record here")
    trust_remote_code: bool = fld(False, "allow custom modelling code of Hub models")

    def __post_init__(self) -> None:
        if self.input_file is None and (self.prompt is None or self.response is None):
            raise ConfigError("give --prompt and --response, or --input-file")
        if self.input_file is not None and (self.prompt or self.response or self.response2):
            raise ConfigError("give either --input-file or --prompt/--response, not both")
        if self.batch_size < 1:
            raise ConfigError("batch_size: must be >= 1")


def _prompt(p: Any, raw: bool) -> Any:
    return p if raw or not isinstance(p, str) else [{"role": "user", "content": p}]


def _response(value: Any, where: str) -> str:
    """A response given as text or as one assistant message (list or dict)."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string or an assistant message")
    return value


def load_items(cfg: ScoreConfig) -> list[dict[str, Any]]:
    """``[{"prompt", "response"[, "response2"]}]`` from the flags or the input file."""
    if cfg.input_file is None:
        item = {"prompt": _prompt(cfg.prompt, cfg.raw_prompt), "response": cfg.response}
        if cfg.response2 is not None:
            item["response2"] = cfg.response2
        return [item]
    path = Path(cfg.input_file)
    if not path.is_file():
        raise ConfigError(f"input_file: {path} not found")
    text = path.read_text(encoding="utf-8")
    try:
        rows = (
            json.loads(text)
            if path.suffix == ".json"
            else [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        )
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON: {e}") from None
    items = []
    for i, row in enumerate(rows):
        where = f"{path}, record {i}"
        if not isinstance(row, dict) or "prompt" not in row:
            raise ConfigError(f"{where}, field 'prompt': missing")
        first, second = ("chosen", "rejected") if "chosen" in row else ("response", "response2")
        if first not in row:
            raise ConfigError(f"{where}, field 'response': missing")
        item = {
            "prompt": _prompt(row["prompt"], cfg.raw_prompt),
            "response": _response(row[first], f"{where}, field {first!r}"),
        }
        if second in row:
            item["response2"] = _response(row[second], f"{where}, field {second!r}")
        items.append(item)
    return items


def score_items(scorer: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``score`` (and ``score2``, ``preferred``, ``p_first``) to each item."""
    prompts = [it["prompt"] for it in items]
    responses = [it["response"] for it in items]
    pairs = [i for i, it in enumerate(items) if "response2" in it]
    prompts += [items[i]["prompt"] for i in pairs]
    responses += [items[i]["response2"] for i in pairs]
    ids, mask, resp = scorer.encode(prompts, responses)
    raw = scorer.raw_score_ids(ids, mask, resp)  # [N + M]
    scores = scorer.post_process(raw).tolist()
    raw = raw.tolist()
    rows = []
    for i, it in enumerate(items):
        rows.append({**it, "score": scores[i], "raw_score": raw[i]})
    for j, i in enumerate(pairs):
        k = len(items) + j
        diff = raw[i] - raw[k]
        rows[i].update(
            {
                "score2": scores[k],
                "raw_score2": raw[k],
                "p_first": 1.0 / (1.0 + math.exp(-diff)) if diff > -700 else 0.0,
                "preferred": 1 if diff > 0 else 2 if diff < 0 else 0,
            }
        )
    return rows


def _text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else json.dumps(prompt, ensure_ascii=False)


def format_rows(rows: list[dict[str, Any]], normalized: bool) -> str:
    """Readable listing: prompt, each answer with its score, and the preference for pairs."""
    kind = "normalised" if normalized else "raw"
    lines = [f"scores ({kind}; raw in parentheses)"]
    for r in rows:
        lines.append(f"\n> {_text(r['prompt'])}")
        tag = "A " if "score2" in r else ""
        lines.append(f"  {tag}[{r['score']:+.3f}] ({r['raw_score']:+.3f})  {r['response']}")
        if "score2" in r:
            lines.append(f"  B [{r['score2']:+.3f}] ({r['raw_score2']:+.3f})  {r['response2']}")
            verdict = {1: "A preferred", 2: "B preferred", 0: "a tie"}[r["preferred"]]
            lines.append(f"  -> {verdict}: P(A > B) = σ(r_A - r_B) = {r['p_first']:.3f}")
    return "\n".join(lines)


def run(cfg: ScoreConfig) -> list[dict[str, Any]]:
    """Load the RM, score, print; return the rows (prompt, response, score, ...)."""
    from simple_rlhf.models.reward import RewardScorer

    items = load_items(cfg)
    scorer = RewardScorer.load(
        cfg.reward_model,
        trust_remote_code=cfg.trust_remote_code,
        normalize=cfg.normalize,
        clip=cfg.clip,
        batch_size=cfg.batch_size,
    )
    rows = score_items(scorer, items) if items else []
    print(format_rows(rows, scorer.normalize))
    if cfg.output_jsonl:
        out = Path(cfg.output_jsonl)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows
