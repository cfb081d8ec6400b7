"""Helpers shared by the task generators of ``make_tasks.py`` (standard library only)."""

from __future__ import annotations

import hashlib
import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent

FILLERS = {
    "en": [
        "Hope this helps!",
        "Let me know if you need anything else.",
        "I hope this is useful!",
        "Happy to help!",
    ],
    "zh": ["希望对你有帮助！", "如果还有问题请告诉我。", "很高兴为你解答！"],
}


def stable_hash(text: str) -> int:
    """A hash of ``text`` that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def is_heldout(task: str, key_id: str, fraction: float) -> bool:
    """Whether a problem (its language-independent id) belongs to the held-out set."""
    return stable_hash(f"{task}|{key_id}") % 10_000 < fraction * 10_000


def with_filler(text: str, lang: str, rng: random.Random) -> str:
    """``text`` followed by a chatty sentence, as many demonstrators write."""
    sep = rng.choice([" ", "\n"]) if lang == "en" else rng.choice(["", "\n"])
    return text + sep + rng.choice(FILLERS[lang])


def noisy_indices(n: int, fraction: float, rng: random.Random) -> set[int]:
    """Exactly ``round(fraction * n)`` indices out of ``range(n)``: the labels to flip."""
    return set(rng.sample(range(n), round(fraction * n)))


def load_file(path: Path, name: str) -> ModuleType:
    """Import a Python file by path under a unique module name."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_reward(task: str) -> ModuleType:
    """The task's reward module, ``rewards/<task>.py`` (copied as ``reward.py`` into each folder)."""
    return load_file(HERE / "rewards" / f"{task}.py", f"_task_suite_reward_{task}")


def pick(rng: random.Random, options: list[Any], weights: list[float]) -> Any:
    return rng.choices(options, weights=weights)[0]
