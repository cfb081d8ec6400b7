"""Held-out prompts for generation evaluation: a file of the user's, or the data's eval share.

``heldout_prompts(source, data_args, n)`` returns up to ``n`` prompts, each with its record's other
columns (e.g. a reference ``answer`` a reward function reads), and a line saying where they came
from. ``source`` is

* a path (JSONL / JSON / CSV / parquet / folder): every record's prompt (``prompt``, ``messages``
  or a pair's prompt), in file order;
* ``"data"`` or ``"auto"``: the eval share of ``--data-path`` (a published test split, or the
  records held out by ``--eval-fraction``). The built-in ``tiny`` task publishes its own held-out
  prompts, about sets of things never seen in training; they are used for ``tiny``;
* ``"none"``: no prompts.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from simple_rlhf.data.errors import DataError
from simple_rlhf.data.records import PromptRecord
from simple_rlhf.data.sources import TINY, DataSpec, load_records

FROM_DATA = ("auto", "data")


@dataclasses.dataclass(frozen=True)
class HeldoutSet:
    """Prompts (strings or message lists), their extra columns and where they came from."""

    prompts: list[Any]
    fields: list[dict[str, Any]]
    source: str

    def __len__(self) -> int:
        return len(self.prompts)

    def columns(self, idx: list[int] | None = None) -> dict[str, list[Any]]:
        """Extra columns as keyword lists for reward functions (missing entries are None)."""
        rows = self.fields if idx is None else [self.fields[i] for i in idx]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        return {k: [r.get(k) for r in rows] for k in keys}


def _from_records(records: list[Any], n: int, source: str) -> HeldoutSet:
    records = [r for r in records if isinstance(r, PromptRecord)][:n]
    return HeldoutSet([r.prompt for r in records], [dict(r.fields) for r in records], source)


def heldout_prompts(source: str, data_args: Any, n: int) -> HeldoutSet:
    """Up to ``n`` held-out prompts from ``source`` (see the module docstring)."""
    if n <= 0 or source == "none":
        return HeldoutSet([], [], "none")
    if source not in FROM_DATA:
        spec = DataSpec(paths=(source,), split="all", eval_fraction=0.0)
        records, _ = load_records(spec, "prompt", None, "train")
        return _from_records(records, n, source)
    paths = list(data_args.data_path)
    if paths == [TINY]:
        tiny_task = importlib.import_module("simple_rlhf.data.tiny_task")
        prompts = tiny_task.eval_prompts(n)
        return HeldoutSet(prompts, [{} for _ in prompts], "tiny (held-out prompts)")
    spec = DataSpec(
        paths=tuple(paths),
        split="all",
        seed=data_args.data_seed,
        eval_fraction=data_args.eval_fraction,
    )
    try:
        records, _ = load_records(spec, "prompt", None, "eval")
    except DataError as e:
        raise DataError(f"held-out prompts from --data-path: {e}") from None
    return _from_records(records, n, f"the eval share of {', '.join(paths)}")
