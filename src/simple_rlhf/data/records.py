"""Normalised record types, and the functions that turn ONE raw record into them.

A *raw record* is a dict in one of the standard shapes of ``DATA_FORMATS.md``; a *text* is either a
raw string (used as is, no chat template) or a list of messages ``{"role", "content"}`` (rendered
with the tokenizer's chat template later). The four record types the trainers use::

    PromptRecord(prompt, fields)            prompts for RL / generation (+ extra columns)
    SFTRecord(prompt, response)             one demonstration
    PairRecord(prompt, chosen, rejected)    one preference pair
    UnpairedRecord(prompt, completion, label)   one KTO example (label True = desirable)

Every function here raises :class:`~simple_rlhf.data.errors.RecordError` naming the field on bad
input; the caller adds the source and record number. Rules:

* A conversational prompt must end before an assistant turn; a conversational response must start
  with an assistant message. A conversational ``chosen``/``rejected`` that repeats the prompt
  messages first (a whole dialogue) has that prefix removed.
* Prompt and responses must be the same kind (both strings or both message lists).
* Empty strings, whitespace-only strings, empty message lists and responses whose messages are all
  empty are errors. Message dicts are normalised to exactly ``{"role", "content"}``.
* ``{"chosen", "rejected"}`` without a prompt: see :func:`split_conversations` and
  :func:`split_transcripts`. Identical chosen and rejected texts are a valid (if useless) pair.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Union

from simple_rlhf.data.errors import RecordError

Message = dict[str, str]
Text = Union[str, list[Message]]  # noqa: UP007  (a runtime alias, kept readable)
ROLES = frozenset({"system", "user", "assistant", "tool"})
KINDS = ("sft", "pair", "prompt", "unpaired")
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


@dataclass(frozen=True)
class PromptRecord:
    """A prompt, plus the record's other columns (e.g. a reference answer for a reward function)."""

    prompt: Text
    fields: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class SFTRecord:
    """A demonstration; a conversational ``response`` is the list of assistant message(s)."""

    prompt: Text
    response: Text


@dataclass(frozen=True)
class PairRecord:
    """A preference pair: ``chosen`` is preferred to ``rejected`` for ``prompt``."""

    prompt: Text
    chosen: Text
    rejected: Text


@dataclass(frozen=True)
class UnpairedRecord:
    """One completion marked desirable (``label=True``) or undesirable (``False``), as in KTO."""

    prompt: Text
    completion: Text
    label: bool


Record = Union[PromptRecord, SFTRecord, PairRecord, UnpairedRecord]  # noqa: UP007


# ----------------------------------------------------------------------------- field checks
def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _keys(raw: Mapping[str, Any]) -> str:
    return f"(record has keys {sorted(raw)})"


def _require_dict(raw: object) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise RecordError(None, f"expected an object (a record), got {_type_name(raw)}")
    return raw


def _get(raw: Mapping[str, Any], key: str, needs: str) -> Any:
    if key not in raw:
        raise RecordError(key, f"missing: {needs} {_keys(raw)}")
    return raw[key]


def _message(value: object, field_: str, i: int) -> Message:
    if not isinstance(value, Mapping):
        raise RecordError(
            field_,
            f"message {i}: expected an object with 'role' and 'content', got {_type_name(value)}",
        )
    role, content = value.get("role"), value.get("content")
    if not isinstance(role, str) or role not in ROLES:
        raise RecordError(
            field_, f"message {i}: 'role' must be one of {sorted(ROLES)}, got {role!r}"
        )
    if not isinstance(content, str):
        raise RecordError(
            field_, f"message {i}: 'content' must be a string, got {_type_name(content)}"
        )
    return {"role": role, "content": content}


def check_text(value: object, field_: str) -> Text:
    """Validate a text: a non-blank string, or a non-empty list of valid messages."""
    if isinstance(value, str):
        if not value.strip():
            raise RecordError(field_, "empty string")
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            raise RecordError(field_, "empty list of messages")
        return [_message(m, field_, i) for i, m in enumerate(value)]
    raise RecordError(field_, f"expected a string or a list of messages, got {_type_name(value)}")


def _check_prompt(prompt: Text, field_: str = "prompt") -> Text:
    if isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
        raise RecordError(field_, "a conversational prompt must end before an assistant turn")
    return prompt


def _check_response(response: Text, field_: str) -> Text:
    if isinstance(response, str):
        if not response.strip():
            raise RecordError(field_, "empty response")
        return response
    if not response:
        raise RecordError(field_, "empty response")
    if response[0]["role"] != "assistant":
        raise RecordError(
            field_, f"a conversational response must start with an assistant message, "
            f"got role {response[0]['role']!r}"
        )  # fmt: skip
    if not any(m["content"].strip() for m in response):
        raise RecordError(field_, "empty response (every message has empty content)")
    return response


def _response(value: object, field_: str, prompt: Text) -> Text:
    text = check_text(value, field_)
    if isinstance(text, str) != isinstance(prompt, str):
        kinds = ("a string", "a list of messages")
        raise RecordError(
            field_, f"is {kinds[isinstance(text, list)]} but 'prompt' is "
            f"{kinds[isinstance(prompt, list)]}; both must be strings or both messages"
        )  # fmt: skip
    if isinstance(text, list) and len(text) > len(prompt) and text[: len(prompt)] == prompt:
        text = text[len(prompt) :]  # a whole dialogue repeating the prompt
    return _check_response(text, field_)


def _label(raw: Mapping[str, Any]) -> bool:
    label = _get(raw, "label", "an unpaired (KTO) record needs 'prompt', 'completion', 'label'")
    if not isinstance(label, bool):
        raise RecordError("label", f"expected true or false, got {_type_name(label)} {label!r}")
    return label


# ----------------------------------------------------------------------------- prompt-less pairs
def split_conversations(
    chosen: list[Message], rejected: list[Message]
) -> tuple[list[Message], list[Message], list[Message]]:
    """Split two dialogues into (prompt, chosen response, rejected response).

    The prompt is the longest run of shared leading messages ``k`` such that message ``k`` of both
    is an assistant message and message ``k-1`` is not: with ``L`` the common-prefix length,
    ``k`` starts at ``min(L, len(chosen) - 1, len(rejected) - 1)`` and decreases until it fits.
    """
    common = 0
    while common < min(len(chosen), len(rejected)) and chosen[common] == rejected[common]:
        common += 1
    k = min(common, len(chosen) - 1, len(rejected) - 1)
    while k > 0 and not (
        chosen[k]["role"] == rejected[k]["role"] == "assistant"
        and chosen[k - 1]["role"] != "assistant"
    ):
        k -= 1
    if k <= 0:
        raise RecordError(
            "chosen", "cannot find the prompt: chosen and rejected share no leading messages "
            "followed by an assistant turn; add a 'prompt' field"
        )  # fmt: skip
    return chosen[:k], chosen[k:], rejected[k:]


def split_transcripts(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two raw strings into (prompt, chosen response, rejected response).

    hh-rlhf transcripts (both contain ``"\\n\\nHuman:"`` and ``"\\n\\nAssistant:"``): the prompt is
    everything up to and including the LAST ``"\\n\\nAssistant:"`` when that is the same in both.
    Otherwise: the longest common prefix ``L``, capped at ``min(len) - 1`` so both responses keep a
    character, backed off to the start of a whitespace run (the response then starts with the
    whitespace, as BPE tokenizers prefer: ``"Q? fine"`` / ``"Q? no"`` -> ``"Q?"``, ``" fine"``,
    ``" no"``); if the shared part holds no whitespace boundary (e.g. Chinese), the character
    boundary at the cap is kept.
    """
    if all(HUMAN in s and ASSISTANT in s for s in (chosen, rejected)):
        ic = chosen.rfind(ASSISTANT) + len(ASSISTANT)
        ir = rejected.rfind(ASSISTANT) + len(ASSISTANT)
        if chosen[:ic] == rejected[:ir] and chosen.find(HUMAN) < ic:
            return chosen[:ic], chosen[ic:], rejected[ir:]
    k = min(len(os.path.commonprefix([chosen, rejected])), len(chosen) - 1, len(rejected) - 1)
    if k <= 0:
        raise RecordError(
            "chosen", "cannot find the prompt: chosen and rejected share no common prefix; "
            "add a 'prompt' field"
        )  # fmt: skip
    j = k
    while j > 0 and not (
        chosen[j].isspace() and rejected[j].isspace() and not chosen[j - 1].isspace()
    ):
        j -= 1
    cut = j if j > 0 else k
    return chosen[:cut], chosen[cut:], rejected[cut:]


# ----------------------------------------------------------------------------- conversions
_SFT_NEEDS = "an SFT record needs 'messages', or 'prompt' with 'response', 'completion' or 'chosen'"


def _split_messages(raw: Mapping[str, Any]) -> tuple[list[Message], Message]:
    msgs = check_text(raw["messages"], "messages")
    if isinstance(msgs, str):
        raise RecordError("messages", "expected a list of messages, got str")
    if msgs[-1]["role"] != "assistant":
        raise RecordError(
            "messages", f"the last message must have role 'assistant', got {msgs[-1]['role']!r}"
        )
    if len(msgs) < 2:
        raise RecordError("messages", "needs at least one message before the assistant message")
    _check_prompt(msgs[:-1], "messages")
    _check_response([msgs[-1]], "messages")
    return msgs[:-1], msgs[-1]


def to_sft(raw: Mapping[str, Any]) -> SFTRecord:
    """One raw record -> :class:`SFTRecord` (``messages``; ``prompt`` + response/completion/chosen;
    or a prompt-less chosen/rejected pair, whose chosen side is the demonstration)."""
    raw = _require_dict(raw)
    if "messages" in raw:
        prompt, last = _split_messages(raw)
        return SFTRecord(prompt, [last])
    if "prompt" in raw:
        if "completion" in raw and "label" in raw and not _label(raw):
            raise RecordError(
                "label", "is false (an undesirable completion): not an SFT demonstration"
            )
        for key in ("response", "completion", "chosen"):
            if key in raw:
                prompt = _check_prompt(check_text(raw["prompt"], "prompt"))
                return SFTRecord(prompt, _response(raw[key], key, prompt))
        raise RecordError("response", f"missing: {_SFT_NEEDS} {_keys(raw)}")
    if "chosen" in raw and "rejected" in raw:
        pair = to_pair(raw)
        return SFTRecord(pair.prompt, pair.chosen)
    raise RecordError("messages", f"missing: {_SFT_NEEDS} {_keys(raw)}")


def to_pair(raw: Mapping[str, Any]) -> PairRecord:
    """One raw record -> :class:`PairRecord` (with or without an explicit prompt)."""
    raw = _require_dict(raw)
    needs = "a preference pair needs 'chosen' and 'rejected'"
    chosen, rejected = _get(raw, "chosen", needs), _get(raw, "rejected", needs)
    if "prompt" in raw:
        prompt = _check_prompt(check_text(raw["prompt"], "prompt"))
        return PairRecord(
            prompt, _response(chosen, "chosen", prompt), _response(rejected, "rejected", prompt)
        )
    c, r = check_text(chosen, "chosen"), check_text(rejected, "rejected")
    if isinstance(c, str) != isinstance(r, str):
        raise RecordError("rejected", "chosen and rejected must both be strings or both messages")
    if isinstance(c, list):
        prompt, c, r = split_conversations(c, r)  # type: ignore[arg-type]
    else:
        prompt, c, r = split_transcripts(c, r)  # type: ignore[arg-type]
        if not prompt.strip():
            raise RecordError("chosen", "the shared prompt part is blank; add a 'prompt' field")
    return PairRecord(prompt, _check_response(c, "chosen"), _check_response(r, "rejected"))


def to_prompt(raw: Mapping[str, Any]) -> PromptRecord:
    """One raw record -> :class:`PromptRecord`; every other column is kept in ``.fields``.

    ``messages`` ending with an assistant turn give the messages before it; otherwise all of them.
    A prompt-less pair gives its split prompt.
    """
    raw = _require_dict(raw)
    if "prompt" in raw:
        prompt = _check_prompt(check_text(raw["prompt"], "prompt"))
        rest = {k: v for k, v in raw.items() if k != "prompt"}
    elif "messages" in raw:
        msgs = check_text(raw["messages"], "messages")
        if isinstance(msgs, str):
            raise RecordError("messages", "expected a list of messages, got str")
        prompt = _split_messages(raw)[0] if msgs[-1]["role"] == "assistant" else msgs
        rest = {k: v for k, v in raw.items() if k != "messages"}
    elif "chosen" in raw and "rejected" in raw:
        prompt = to_pair(raw).prompt
        rest = dict(raw)
    else:
        raise RecordError("prompt", f"missing: a prompt record needs 'prompt' {_keys(raw)}")
    return PromptRecord(prompt, MappingProxyType(rest))


def to_unpaired(raw: Mapping[str, Any]) -> UnpairedRecord:
    """One raw record ``{"prompt", "completion", "label": bool}`` -> :class:`UnpairedRecord`."""
    raw = _require_dict(raw)
    needs = "an unpaired (KTO) record needs 'prompt', 'completion', 'label'"
    prompt = _check_prompt(check_text(_get(raw, "prompt", needs), "prompt"))
    completion = _response(_get(raw, "completion", needs), "completion", prompt)
    return UnpairedRecord(prompt, completion, _label(raw))


def pair_to_unpaired(pair: PairRecord) -> list[UnpairedRecord]:
    """A pair -> ``[Unpaired(chosen, True), Unpaired(rejected, False)]``."""
    return [
        UnpairedRecord(pair.prompt, pair.chosen, True),
        UnpairedRecord(pair.prompt, pair.rejected, False),
    ]


def to_kind(raw: Mapping[str, Any], kind: str) -> list[Record]:
    """One raw record -> the list of records of ``kind`` it gives (one, or two for a pair asked
    as ``"unpaired"``)."""
    if kind == "sft":
        return [to_sft(raw)]
    if kind == "pair":
        return [to_pair(raw)]
    if kind == "prompt":
        return [to_prompt(raw)]
    if kind == "unpaired":
        raw = _require_dict(raw)
        if "chosen" in raw and "rejected" in raw and "label" not in raw:
            return list(pair_to_unpaired(to_pair(raw)))
        return [to_unpaired(raw)]
    raise ValueError(f"unknown record kind {kind!r}; expected one of {KINDS}")


def record_kinds(raw: Mapping[str, Any]) -> set[str]:
    """The kinds (subset of ``{"sft", "pair", "prompt", "unpaired"}``) this record can feed."""
    kinds = set()
    for kind in KINDS:
        try:
            to_kind(raw, kind)
        except RecordError:
            continue
        kinds.add(kind)
    return kinds


def primary_kind(raw: Mapping[str, Any]) -> str | None:
    """What the record *is*, from its keys (no validation): ``"pair"`` (chosen + rejected),
    ``"unpaired"`` (label), ``"sft"`` (messages, or prompt + response/completion), ``"prompt"``
    (prompt only), or ``None``. Used to decide which training step a source feeds."""
    if not isinstance(raw, Mapping):
        return None
    if "chosen" in raw and "rejected" in raw:
        return "pair"
    if "label" in raw and "completion" in raw:
        return "unpaired"
    if "messages" in raw or ("prompt" in raw and ({"response", "completion", "chosen"} & set(raw))):
        return "sft"
    return "prompt" if "prompt" in raw else None
