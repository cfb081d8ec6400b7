"""Data sources -> encoded examples, cached: the one entry point every trainer uses for data.

``load_encoded(tokenizer, data_args, kind, step, split)`` reads the sources named in
``data_args.data_path`` (blended, split per step as in DeepSpeed-Chat), normalises each record to
the requested kind, tokenizes with the stated length policy, and caches the result keyed on the
files' content, the tokenizer and every setting that changes the tokens.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from simple_rlhf.data import tokenize as tk
from simple_rlhf.data.cache import cached, tokenizer_fingerprint

Kind = Literal["sft", "pair", "prompt", "unpaired"]
ENCODERS = {
    "sft": None,  # needs train_on_prompt, see below
    "pair": tk.encode_pairs,
    "unpaired": tk.encode_unpaired,
    "prompt": tk.encode_prompts,
}


def data_cache_dir(data_args: Any) -> Path | None:
    if data_args.data_cache_dir:
        return Path(data_args.data_cache_dir)
    if os.environ.get("SIMPLE_RLHF_NO_DATA_CACHE"):
        return None
    from simple_rlhf.paths import home_dir

    return home_dir() / "data-cache"


def spec_from_args(data_args: Any):
    """The data layer's DataSpec for a DataArgs section."""
    from simple_rlhf.data.sources import DataSpec

    return DataSpec(
        paths=tuple(data_args.data_path),
        split=data_args.split_shares,
        seed=data_args.data_seed,
        eval_fraction=data_args.eval_fraction,
        max_eval_records=data_args.max_eval_samples,
    )


def load_encoded(
    tokenizer: Any,
    data_args: Any,
    kind: Kind,
    step: int | None,
    split: Literal["train", "eval"],
    prepare: Callable[[list[Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], tk.EncodeStats]:
    """Encoded examples of ``kind`` for a pipeline ``step`` (1, 2, 3 or None = all) and split.
    ``prepare(records)`` runs before encoding (SFT decides the prompt format there)."""
    from simple_rlhf.data.sources import load_records

    spec = spec_from_args(data_args)
    usage: list[str] = []
    records, content_hash = load_records(spec, kind, step, split, usage=usage)
    if prepare is not None:
        prepare(records)
    limits = tk.Limits(data_args.max_seq_len, data_args.max_prompt_len, data_args.truncation)
    tk.ensure_chat_template(tokenizer)

    def build() -> tuple[list[dict[str, Any]], tk.EncodeStats]:
        if kind == "sft":
            return tk.encode_sft(tokenizer, records, limits, data_args.train_on_prompt)
        return ENCODERS[kind](tokenizer, records, limits)

    if kind == "prompt":  # prompts carry arbitrary extra fields; cheap to encode, not cached
        examples, stats = build()
        out = examples, dataclasses.replace(stats, sources=usage[0])
        return _check_left(out, len(records), kind, split, data_args)
    parts = {
        "content": content_hash,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "kind": kind,
        "step": step,
        "split": split,
        "limits": [limits.max_seq_len, limits.max_prompt_len, limits.truncation],
        "train_on_prompt": data_args.train_on_prompt,
        "spec": repr(spec),
    }
    out = cached(
        data_cache_dir(data_args),
        parts,
        build,
        to_json=lambda v: {"examples": v[0], "stats": dataclasses.asdict(v[1])},
        from_json=lambda d: (d["examples"], tk.EncodeStats(**d["stats"])),
    )
    out = out[0], dataclasses.replace(out[1], sources=usage[0])
    return _check_left(out, len(records), kind, split, data_args)


def _check_left(
    out: tuple[list[dict[str, Any]], tk.EncodeStats], n: int, kind: str, split: str, data_args: Any
) -> tuple[list[dict[str, Any]], tk.EncodeStats]:
    """A :class:`DataError` when every training record was dropped by the length policy (or as
    an identical pair), saying how many and which limits."""
    examples, stats = out
    if split == "train" and n and not examples:
        from simple_rlhf.data.errors import DataError

        raise DataError(
            f"all {n} training records of kind {kind!r} in {list(data_args.data_path)} were "
            f"dropped ({stats.describe()}); the limits are --max-seq-len {data_args.max_seq_len} "
            f"and --max-prompt-len {data_args.max_prompt_len} tokens: raise them, or pass "
            "--truncation truncate"
        )
    return out


def corpus_texts(data_args: Any, kind: Kind) -> list[str]:
    """Every text of the training records of ``kind`` (prompts, responses, message contents): what
    a tokenizer for this data is trained on."""
    from simple_rlhf.data.sources import load_records

    records, _ = load_records(spec_from_args(data_args), kind, None, "train")
    texts: list[str] = []

    def add(text: Any) -> None:
        if isinstance(text, str):
            texts.append(text)
        elif isinstance(text, list):
            texts.extend(str(m.get("content", "")) for m in text if isinstance(m, dict))

    for r in records:
        for name in ("prompt", "response", "chosen", "rejected", "completion"):
            add(getattr(r, name, None))
    return texts
