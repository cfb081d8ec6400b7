"""What the trainers call: ``load_records(spec, kind, step, split)`` -> (records, content hash).

For each path of ``spec.paths`` (resolved by :func:`~simple_rlhf.data.adapters.resolve_source`;
the special path ``"tiny"`` is the built-in generated task):

1. **Eval split.** A published held-out split is used when the source has one: the adapter's
   ``test_split``, or for other sources a ``test`` / ``eval`` / ``validation`` split (a single file
   has none). Otherwise eval records are held out of ``train`` BEFORE the step split:
   ``holdout_indices(n, f, seed)`` with ``f = spec.eval_fraction``, or if that is ``None`` the
   adapter's own fraction (0.1 = DeepSpeed-Chat's 9:1) or :data:`DEFAULT_EVAL_FRACTION`.
2. **Step split** (``--data_split 2,4,4``), train only, each source independently: a source whose
   records are *pairs* (an adapter with ``has_pairs``, or a local source whose first record has
   ``chosen`` + ``rejected``) is cut by ``split_indices(n_train, weights, seed)`` and step ``s``
   (1-based) gets share ``s``. ``spec.split = None`` ("auto", a command run on its own) cuts only
   the named datasets of the DeepSpeed-Chat lineage and ``"tiny"`` (with :data:`DEFAULT_SPLIT`,
   as DeepSpeed-Chat's step scripts do); local files and folders give every pair to the command.
   Any other source is not cut: it gives ALL its records to the one
   step it can feed and nothing to the others — SFT-only sources (``has_pairs=False``, or
   ``messages`` / ``prompt`` + ``response`` records) to step 1, unpaired ``label`` sources to step
   2, prompt-only sources to step 3. So SFT-only datasets give no prompts to step 3; ask with
   ``step=None`` to use their prompts anyway. Eval records follow the same rule but are never cut.
   ``step=None`` means every record. ``"tiny"`` has its own eval split; it gives pairs (split
   by step), or for kind ``unpaired`` labelled completions (all to step 2).
3. **Kind conversion** with :func:`~simple_rlhf.data.records.to_kind` (an adapter's conversion
   first; rows it returns ``None`` for are skipped and counted in the log). The first record that
   cannot feed ``kind`` raises one :class:`DataError` naming file, record and field; asking an
   SFT-only *adapter* for pairs (``step`` None or 1) raises one error naming the dataset.
4. **Blending.** The records of all paths are concatenated in order and shuffled with the seed;
   eval records are then cut to ``spec.max_eval_records``. No train record -> :class:`DataError`;
   no eval record -> empty list.

The returned hash covers every source read (file bytes / Hub fingerprints) and every setting that
changes the result (kind, step, split, weights, seed, fractions), for cache keys.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from simple_rlhf.data.adapters import DatasetAdapter, resolve_source
from simple_rlhf.data.errors import DataError, RecordError
from simple_rlhf.data.readers import SPLIT_ALIASES, RawSource, available_splits, read_raw
from simple_rlhf.data.records import KINDS, Record, primary_kind, to_kind
from simple_rlhf.data.split import holdout_indices, permutation, split_indices

logger = logging.getLogger(__name__)

DEFAULT_EVAL_FRACTION = 0.05
TINY = "tiny"
HELD_OUT_SPLITS = ("test", "eval", "validation", "valid", "dev")
STEP_OF_ROLE = {"sft": 1, "unpaired": 2, "prompt": 3}
DEFAULT_SPLIT = (2.0, 4.0, 4.0)  # DeepSpeed-Chat's --data_split
_HASH_VERSION = 1

Kind = Literal["sft", "pair", "prompt", "unpaired"]


@dataclass(frozen=True)
class DataSpec:
    """Which data to read and how to split it.

    paths: files, folders, Hub names, ``NAME@PATH`` or ``"tiny"``; their records are blended.
    split: per-step weights (DeepSpeed-Chat ``--data_split``; ``"2,4,4"`` is accepted too), step
        ``s`` gets share ``s``; ``None`` = auto (see the module docstring, step 2); ``()`` or
        ``"all"``: no step split, every step gets every record its kind can use.
    seed: seeds the eval hold-out, the step split and the blending shuffle.
    eval_fraction: share of train held out for eval when a source has no published eval split
        (``None``: the adapter's own, else 0.05).
    max_eval_records: keep at most this many eval records (after blending), ``None`` = all.
    """

    paths: tuple[str, ...]
    split: tuple[float, ...] | None = DEFAULT_SPLIT
    seed: int = 1234
    eval_fraction: float | None = None
    max_eval_records: int | None = None

    def __post_init__(self) -> None:
        paths = (self.paths,) if isinstance(self.paths, str) else tuple(self.paths)
        if not paths or not all(isinstance(p, str) and p for p in paths):
            raise ValueError(f"DataSpec.paths must be non-empty strings, got {self.paths!r}")
        object.__setattr__(self, "paths", paths)
        if self.split == "all":
            object.__setattr__(self, "split", ())
        elif self.split is not None:
            weights = self.split.split(",") if isinstance(self.split, str) else self.split
            object.__setattr__(self, "split", tuple(float(w) for w in weights))
            if self.split:
                split_indices(0, self.split, 0)  # validates the weights
        if self.eval_fraction is not None and not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_eval_records is not None and self.max_eval_records < 0:
            raise ValueError(f"max_eval_records must be >= 0, got {self.max_eval_records}")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _tiny_raw(split: str, kind: str) -> RawSource:
    """The generated task: pairs, or ``{"prompt", "completion", "label"}`` for kind unpaired."""
    tiny_task = importlib.import_module("simple_rlhf.data.tiny_task")
    tiny_split = "train" if split == "train" else "eval"
    if kind == "unpaired":
        records = tiny_task.raw_records(tiny_split, kind="unpaired")
    else:
        records = tiny_task.raw_records(tiny_split)
    label = f"{TINY} (split {split!r})"
    return RawSource(label, list(records), _digest(records), split, ((label, len(records)),))


def _read_source(
    path: str,
    adapter: DatasetAdapter | None,
    location: str,
    split: str,
    spec: DataSpec,
    kind: str,
) -> tuple[RawSource, list[int]]:
    """Read what ``split`` needs and return it with the record indices that belong to ``split``."""
    if path == TINY:
        raw = _tiny_raw(split, kind)
        return raw, list(range(len(raw.records)))
    config = adapter.config if adapter else None
    if adapter is None:
        wanted: tuple[str, ...] = HELD_OUT_SPLITS
    elif adapter.test_split:  # a local copy may name it differently (a DS-Chat eval.json)
        wanted = SPLIT_ALIASES.get(adapter.test_split, (adapter.test_split,))
    else:
        wanted = ()
    have = available_splits(location, name=config)
    held_out = next((s for s in wanted if s in have), None)
    if split == "eval" and held_out is not None:
        raw = read_raw(location, held_out, name=config)
        return raw, list(range(len(raw.records)))
    raw = read_raw(location, "train", name=config)
    n = len(raw.records)
    if held_out is not None:
        return raw, list(range(n))
    fraction = spec.eval_fraction
    if fraction is None:
        fraction = adapter.eval_fraction if adapter and adapter.eval_fraction is not None else None
    if fraction is None:
        fraction = DEFAULT_EVAL_FRACTION
    train_idx, eval_idx = holdout_indices(n, fraction, spec.seed)
    return raw, train_idx if split == "train" else eval_idx


def _role(adapter: DatasetAdapter | None, raw: RawSource) -> str:
    if adapter is not None:
        return "pair" if adapter.has_pairs else "sft"
    return (primary_kind(raw.records[0]) if raw.records else None) or "pair"


def _convert(
    raw: RawSource, indices: Sequence[int], adapter: DatasetAdapter | None, kind: str
) -> list[Record]:
    out: list[Record] = []
    skipped = 0
    for i in indices:
        row: dict[str, Any] | None = raw.records[i]
        try:
            if adapter is not None:
                row = adapter.convert(row)  # type: ignore[arg-type]
                if row is None:
                    skipped += 1
                    continue
            try:
                out.extend(to_kind(row, kind))  # type: ignore[arg-type]
            except RecordError as exc:
                if adapter is not None:
                    exc = RecordError(
                        exc.field, f"{exc.problem} (after the {adapter.name} adapter)"
                    )
                raise exc from None
        except RecordError as exc:
            file, j = raw.where(i)
            raise exc.at(file, j) from None
    if skipped:
        logger.info("%s: skipped %d of %d rows (adapter)", raw.source, skipped, len(indices))
    return out


def _load_source(
    path: str, spec: DataSpec, kind: str, step: int | None, split: str
) -> tuple[list[Record], dict[str, Any]]:
    resolved = resolve_source(path)
    adapter = None if path == TINY else resolved.adapter
    info: dict[str, Any] = {"path": path, "adapter": adapter.name if adapter else None}
    if adapter is not None and not adapter.has_pairs:
        if step not in (None, 1):
            info["skipped"] = f"SFT-only source gives nothing to step {step}"
            return [], info
        if kind in ("pair", "unpaired"):
            raise DataError(
                f"this dataset has one response per prompt (SFT only); it cannot give {kind} "
                "records (it feeds step 1, and prompts when asked with step=None)",
                source=path,
            )
    raw, indices = _read_source(path, adapter, resolved.location, split, spec, kind)
    info.update(hash=raw.content_hash, split=raw.split, n=len(indices))
    role = _role(adapter, raw)
    if step is not None:
        if role != "pair":
            if STEP_OF_ROLE[role] != step and kind != role:
                info["empty_because"] = _why_not(raw, adapter, role, kind, step)
                indices = []
            elif STEP_OF_ROLE[role] != step:
                indices = []
        elif split == "train":
            weights = _weights(spec, path, adapter)
            if weights is not None:
                share = split_indices(len(indices), weights, spec.seed)[step - 1]
                info["share"] = f"step {step}'s share of --data-split {_fmt(weights)}"
                indices = [indices[k] for k in share]
    records = _convert(raw, indices, adapter, kind)
    info["used"] = len(records)
    if path != TINY:  # every record is checked, not only this step's share of the split
        used = set(indices)
        _convert(raw, [i for i in range(len(raw.records)) if i not in used], adapter, role)
    return records, info


def _weights(spec: DataSpec, path: str, adapter: DatasetAdapter | None) -> tuple[float, ...] | None:
    """The step split that applies to a pair source: the spec's, or in auto mode DeepSpeed-Chat's
    for ``tiny`` and named datasets, none (every record) for the user's own files."""
    if spec.split is not None:
        return spec.split or None
    return DEFAULT_SPLIT if path == TINY or adapter is not None else None


def _fmt(weights: Sequence[float]) -> str:
    return ",".join(f"{w:g}" for w in weights)


def describe_usage(infos: Sequence[dict[str, Any]], kind: str, split: str) -> str:
    """One line per source saying how many of its records this command uses, and why not all."""
    parts = []
    for info in infos:
        if "skipped" in info or info.get("n") is None:
            continue
        text = f"{info['path']}: {info.get('used', 0):,} of {info['n']:,} {split} records as {kind}"
        if "share" in info:
            text += f" ({info['share']}; --data-split all uses every record)"
        elif "empty_because" in info:
            text += " (" + info["empty_because"] + ")"
        parts.append(text)
    return "; ".join(parts)


def _why_not(
    raw: RawSource, adapter: DatasetAdapter | None, role: str, kind: str, step: int
) -> str:
    """Why a source of ``role`` records gives nothing to ``step``: its first record's error when
    read as ``kind`` (naming file, record and field), or what the records are."""
    what = f"{raw.source} holds {role} records (they feed step {STEP_OF_ROLE[role]})"
    if not raw.records:
        return f"{raw.source} is empty"
    try:
        _convert(raw, [0], adapter, kind)
    except DataError as e:
        return f"{what}; as {kind} records: {e}"
    return what


def load_records(
    spec: DataSpec,
    kind: Kind,
    step: int | None = None,
    split: Literal["train", "eval"] = "train",
    usage: list[str] | None = None,
) -> tuple[list[Record], str]:
    """Records of ``kind`` for training ``step`` (1-based, ``None`` = all) and ``split``.

    Returns ``(records, content_hash)``; rules in the module docstring. ``usage``, if given, gets
    one line saying how many records of each source were used (see :func:`describe_usage`).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    n_steps = len(spec.split or DEFAULT_SPLIT)
    if step is not None and not 1 <= step <= n_steps:
        raise ValueError(f"step must be in 1..{n_steps} (the data split), got {step}")
    records: list[Record] = []
    infos = []
    for path in spec.paths:
        recs, info = _load_source(path, spec, kind, step, split)
        records.extend(recs)
        infos.append(info)
    order = permutation(len(records), spec.seed, salt="blend")
    records = [records[i] for i in order]
    if split == "eval" and spec.max_eval_records is not None:
        records = records[: spec.max_eval_records]
    if usage is not None:
        usage.append(describe_usage(infos, kind, split))
    if split == "train" and not records:
        why = "; ".join(i["empty_because"] for i in infos if "empty_because" in i)
        raise DataError(
            f"no training records of kind {kind!r} for step {step} in {list(spec.paths)} "
            f"(data split {spec.split})" + (f": {why}" if why else "")
        )
    settings = {
        "v": _HASH_VERSION,
        "kind": kind,
        "step": step,
        "split": split,
        "weights": spec.split,
        "seed": spec.seed,
        "eval_fraction": spec.eval_fraction,
        "max_eval_records": spec.max_eval_records,
        "sources": infos,
    }
    return records, _digest(settings)
