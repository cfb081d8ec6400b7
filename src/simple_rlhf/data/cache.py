"""A small on-disk cache for tokenized data, keyed on everything that changes the tokens.

The key is a SHA-256 over: the content hash of every data file read (so an edited file is never
served stale), the tokenizer's full serialisation and chat template, every tokenization setting,
and ``CACHE_VERSION`` (bumped when the encoding code changes). Entries are JSON (nothing in the
cache can run code when read back) and are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
CACHE_VERSION = 3  # 2: JSON entries (1 was pickle); 3: identical pairs counted


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's vocabulary, merges, special tokens, chat template and stored
    prompt format."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(
        backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode()
    )
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    specials = {k: str(v) for k, v in tokenizer.special_tokens_map.items()}
    h.update(json.dumps(specials, sort_keys=True).encode())
    fmt = (getattr(tokenizer, "init_kwargs", None) or {}).get("prompt_format")
    if fmt is not None:  # how prompts are rendered (data/prompt_format.py) changes the tokens
        h.update(json.dumps(fmt, sort_keys=True).encode())
    return h.hexdigest()


def cache_key(parts: Mapping[str, Any]) -> str:
    payload = json.dumps({"v": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def cached(
    cache_dir: str | Path | None,
    parts: Mapping[str, Any],
    build: Callable[[], T],
    *,
    to_json: Callable[[T], Any] = lambda v: v,
    from_json: Callable[[Any], T] = lambda v: v,
) -> T:
    """Return the cached value for ``parts`` or build, store and return it (no cache if dir None).
    ``to_json`` / ``from_json`` convert the value to and from JSON-able data."""
    if cache_dir is None:
        return build()
    root = Path(cache_dir)
    path = root / f"{cache_key(parts)}.json"
    if path.is_file():
        try:
            return from_json(json.loads(path.read_text(encoding="utf-8")))
        except Exception:  # noqa: BLE001 - a corrupt entry is rebuilt
            path.unlink(missing_ok=True)
    value = build()
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(to_json(value), f, separators=(",", ":"))
    os.replace(tmp, path)
    return value
