"""Adapters: named datasets of the DeepSpeed-Chat lineage -> standard raw records.

An adapter turns one row *as published* into one standard raw dict (``DATA_FORMATS.md``), or
``None`` to skip the row (e.g. a tie in ``openai/webgpt_comparisons``); skipped rows are counted
and logged by :mod:`simple_rlhf.data.sources`. Texts follow DeepSpeed-Chat: raw strings in the
``" Human: … Assistant:"`` style, responses starting with a space.

Naming a source (``resolve_source``):

* ``NAME`` — a Hub dataset; the adapter ``NAME`` applies if registered.
* ``PATH`` — a local file or folder; the adapter applies if the folder's last two path components
  are a registered ``OWNER/NAME`` (``/data/Dahoas/rm-static``) or its basename is ``OWNER__NAME`` or
  ``OWNER--NAME`` (``/data/Dahoas__rm-static``); otherwise records must be in standard format.
* ``NAME@PATH`` — adapter ``NAME`` applied to the local copy at ``PATH``
  (``Dahoas/rm-static@/mnt/copies/rm``). Recognised when the whole string is not an existing
  path; it splits at the first ``@``, and an unknown ``NAME`` is an error listing the known ones.

Registering your own::

    from simple_rlhf.data.adapters import DatasetAdapter, register_adapter

    register_adapter(DatasetAdapter(
        name="me/my-prefs",
        convert=lambda row: {"prompt": row["q"], "chosen": row["good"], "rejected": row["bad"]},
        has_pairs=True, language="en", test_split="test",
    ))
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simple_rlhf.data.errors import DataError, RecordError
from simple_rlhf.data.readers import looks_like_path

Row = dict[str, Any]


@dataclass(frozen=True)
class DatasetAdapter:
    """How to read one named dataset.

    ``convert``: published row -> standard raw dict, or ``None`` to skip it (may raise
    :class:`RecordError`). ``has_pairs``: rows carry chosen/rejected (False: SFT only).
    ``test_split``: the published held-out split (``None``: only ``train``; eval records are then
    held out of train, ``eval_fraction`` of them, 0.1 in DeepSpeed-Chat). ``config``: the Hub
    config name to load.
    """

    name: str
    convert: Callable[[Row], Row | None]
    has_pairs: bool
    language: str
    test_split: str | None
    config: str | None = None
    eval_fraction: float | None = None


ADAPTERS: dict[str, DatasetAdapter] = {}


def register_adapter(adapter: DatasetAdapter, *, replace: bool = False) -> DatasetAdapter:
    """Add ``adapter`` to :data:`ADAPTERS` (an existing name needs ``replace=True``)."""
    if adapter.name in ADAPTERS and not replace:
        raise ValueError(f"adapter {adapter.name!r} is already registered (pass replace=True)")
    ADAPTERS[adapter.name] = adapter
    return adapter


def get_adapter(name: str) -> DatasetAdapter:
    """The adapter registered as ``name``; unknown -> :class:`DataError` listing the known ones."""
    try:
        return ADAPTERS[name]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise DataError(f"unknown dataset adapter {name!r}; known adapters: {known}") from None


@dataclass(frozen=True)
class ResolvedSource:
    """``location``: what to read (path or Hub name); ``label``: how the user named it."""

    label: str
    location: str
    adapter: DatasetAdapter | None


def _adapter_for_folder(path: str) -> DatasetAdapter | None:
    norm = os.path.normpath(os.path.abspath(os.path.expanduser(path))).replace("\\", "/")
    pieces = norm.split("/")
    candidates = ["/".join(pieces[-2:])]
    for sep in ("__", "--"):
        if sep in pieces[-1]:
            candidates.append(pieces[-1].replace(sep, "/", 1))
    for cand in candidates:
        for name, adapter in ADAPTERS.items():
            if cand.lower() == name.lower():
                return adapter
    return None


def resolve_source(path_or_name: str) -> ResolvedSource:
    """Decide what to read and which adapter (if any) applies; rules in the module docstring."""
    expanded = os.path.expanduser(path_or_name)
    if "@" in path_or_name and not os.path.exists(expanded):
        name, path = path_or_name.split("@", 1)
        return ResolvedSource(path_or_name, path, get_adapter(name))
    if os.path.isdir(expanded):
        return ResolvedSource(path_or_name, path_or_name, _adapter_for_folder(expanded))
    if os.path.exists(expanded) or looks_like_path(path_or_name):
        return ResolvedSource(path_or_name, path_or_name, None)
    return ResolvedSource(path_or_name, path_or_name, ADAPTERS.get(path_or_name))


# ----------------------------------------------------------------------------- field helpers
def _str(row: Row, key: str) -> str | None:
    """``row[key]`` as a string; ``None`` if missing or null; other types -> RecordError."""
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(key, f"expected a string, got {type(value).__name__}")
    return value


def _need(row: Row, key: str) -> str:
    value = _str(row, key)
    if value is None:
        raise RecordError(key, f"missing (row has keys {sorted(row)})")
    return value


def _human(prompt: str) -> str:
    return f" Human: {prompt} Assistant:"


# ----------------------------------------------------------------------------- converters
def _prompt_chosen_rejected(row: Row) -> Row:
    """rm-static, full-hh-rlhf, the zh rm-static: prompt already ends with "Assistant:"."""
    return {k: _need(row, k) for k in ("prompt", "chosen", "rejected")}


def _synthetic(row: Row) -> Row:
    return {
        "prompt": _human(_need(row, "prompt")),
        "chosen": " " + _need(row, "chosen"),
        "rejected": " " + _need(row, "rejected"),
    }


def _after_assistant(text: str) -> str:
    return text.split("Assistant:")[-1]


def _yitingxie(row: Row) -> Row:
    prompt = _need(row, "prompt")
    prompt += "Assistant:" if prompt[-1:].isspace() else " Assistant:"
    return {
        "prompt": prompt,
        "chosen": _after_assistant(_need(row, "chosen")),
        "rejected": _after_assistant(_need(row, "rejected")),
    }


def _hh_rlhf(row: Row) -> Row | None:
    chosen, rejected = _need(row, "chosen"), _need(row, "rejected")
    marker = "\n\nAssistant:"
    if any(not t[t.rfind(marker) + len(marker) :].strip() for t in (chosen, rejected)):
        return None  # a few published transcripts end with an empty assistant turn
    return {"chosen": chosen, "rejected": rejected}


_CITATION = re.compile(r"\s?\[\d+(?:\s*,\s*\d+)*\]")


def _webgpt(row: Row) -> Row | None:
    question = row.get("question")
    text = question.get("full_text") if isinstance(question, dict) else None
    if not isinstance(text, str):
        raise RecordError("question", "expected an object with a string 'full_text'")
    scores = []
    for key in ("score_0", "score_1"):
        score = row.get(key)
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise RecordError(key, f"expected a number, got {type(score).__name__}")
        scores.append(float(score))
    if scores[0] == scores[1]:
        return None  # ties carry no preference
    answers = [_need(row, "answer_0"), _need(row, "answer_1")]
    best = 0 if scores[0] > scores[1] else 1
    clean = [" " + _CITATION.sub("", a) for a in answers]  # drop "[1]"-style citations
    return {"prompt": _human(text), "chosen": clean[best], "rejected": clean[1 - best]}


def _shp(row: Row) -> Row:
    label = row.get("labels")
    if label not in (0, 1):
        raise RecordError("labels", f"expected 0 or 1, got {label!r}")
    a, b = _need(row, "human_ref_A"), _need(row, "human_ref_B")
    chosen, rejected = (a, b) if label == 1 else (b, a)
    return {
        "prompt": _human(_need(row, "history")),
        "chosen": " " + chosen,
        "rejected": " " + rejected,
    }


def _zhihu(row: Row) -> Row | None:
    instruction, response = _str(row, "INSTRUCTION"), _str(row, "RESPONSE")
    if not instruction or not response:
        return None
    return {"prompt": _human(instruction), "response": " " + response}


def _hc3(row: Row) -> Row | None:
    question, answers = _str(row, "question"), row.get("human_answers")
    if not isinstance(answers, list):
        raise RecordError("human_answers", f"expected a list, got {type(answers).__name__}")
    if not question or not answers or not isinstance(answers[0], str) or not answers[0].strip():
        return None
    return {"prompt": _human(question), "response": " " + answers[0]}


for _adapter in (
    DatasetAdapter("Dahoas/rm-static", _prompt_chosen_rejected, True, "en", "test"),
    DatasetAdapter("Dahoas/full-hh-rlhf", _prompt_chosen_rejected, True, "en", "test"),
    DatasetAdapter(
        "Dahoas/synthetic-instruct-gptj-pairwise", _synthetic, True, "en", None, eval_fraction=0.1
    ),
    DatasetAdapter("yitingxie/rlhf-reward-datasets", _yitingxie, True, "en", "test"),
    DatasetAdapter("Anthropic/hh-rlhf", _hh_rlhf, True, "en", "test"),
    DatasetAdapter("openai/webgpt_comparisons", _webgpt, True, "en", None, eval_fraction=0.1),
    DatasetAdapter("stanfordnlp/SHP", _shp, True, "en", "validation"),
    DatasetAdapter(
        "zwh9029/rm-static-m2m100-zh-jianti", _prompt_chosen_rejected, True, "zh", "test"
    ),
    DatasetAdapter("wangrui6/Zhihu-KOL", _zhihu, False, "zh", None, eval_fraction=0.1),
    DatasetAdapter(
        "Hello-SimpleAI/HC3-Chinese", _hc3, False, "zh", None, config="all", eval_fraction=0.1
    ),
):
    register_adapter(_adapter)
