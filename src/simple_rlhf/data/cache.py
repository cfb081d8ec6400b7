"""A small on-disk cache for tokenized data, keyed on everything that changes the tokens.

The key is a SHA-256 over: the content hash of every data file read (so an edited file is never
served stale), the tokenizer's full serialisation and chat template, every tokenization setting,
and ``CACHE_VERSION`` (bumped when the encoding code changes). Entries are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
CACHE_VERSION = 1


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's vocabulary, merges, special tokens and chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(
        backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode()
    )
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    specials = {k: str(v) for k, v in tokenizer.special_tokens_map.items()}
    h.update(json.dumps(specials, sort_keys=True).encode())
    return h.hexdigest()


def cache_key(parts: Mapping[str, Any]) -> str:
    payload = json.dumps({"v": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def cached(cache_dir: str | Path | None, parts: Mapping[str, Any], build: Callable[[], T]) -> T:
    """Return the cached value for ``parts`` or build, store and return it (no cache if dir None)."""
    if cache_dir is None:
        return build()
    root = Path(cache_dir)
    path = root / f"{cache_key(parts)}.pkl"
    if path.is_file():
        try:
            with path.open("rb") as f:
                return pickle.load(f)
        except Exception:  # noqa: BLE001 - a corrupt entry is rebuilt
            path.unlink(missing_ok=True)
    value = build()
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return value
