"""How a model's prompts are rendered, decided once (by SFT, from its data) and saved with the model.

A model trained on chat messages must be prompted through its chat template; a model trained on
plain strings must be prompted with the same plain text, ending the same way. Both facts are kept
in the tokenizer's ``tokenizer_config.json`` under the key ``"prompt_format"``::

    "prompt_format": {"kind": "chat"}                      # messages, via the chat template
    "prompt_format": {"kind": "raw", "separator": "\\n"}    # prompt text + separator, then answer

so every command that loads the folder (``eval``, ``chat``, ``score``, the RL trainers, a later
training step) and plain transformers users read the same rule (``tokenizer.init_kwargs``)::

    fmt = AutoTokenizer.from_pretrained(path).init_kwargs.get("prompt_format")

Rules applied by :func:`adapt` (called by ``data/tokenize.py`` for every prompt it renders):

* ``chat`` model, plain-string prompt -> one user message (a plain-string response -> one
  assistant message): the user's held-out file or RL prompts may be plain strings.
* ``raw`` model, plain-string prompt -> the prompt followed by the separator (unless it already
  ends with it); a message-list prompt is a :class:`PromptFormatError` (the plain text the
  model was trained on cannot be rebuilt from messages).
* no stored format (a Hub model, or records of both kinds): prompts are used as they are.

The separator comes from ``--raw-separator`` when SFT sets the format (default ``""``: prompt and
response are joined as they are, as in TRL and DeepSpeed-Chat; prompts usually end in a space,
a newline or "Answer:"). :func:`glued_fraction` measures how many raw records would join two
word characters, which SFT reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from simple_rlhf.data.errors import DataError

KEY = "prompt_format"
KINDS = ("chat", "raw")


class PromptFormatError(DataError):
    """Prompts of a kind the model was not trained on (message lists for a plain-text model)."""


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """``kind``: ``"chat"`` or ``"raw"``; ``separator``: appended to raw prompts."""

    kind: str
    separator: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"prompt format kind must be one of {KINDS}, got {self.kind!r}")

    def to_json(self) -> dict[str, str]:
        return (
            {"kind": self.kind, "separator": self.separator}
            if self.kind == "raw"
            else {"kind": "chat"}
        )

    def describe(self) -> str:
        if self.kind == "chat":
            return "chat (chat template; plain-string prompts are sent as one user message)"
        return f"raw (prompt text + {self.separator!r}, then the response)"


def get_format(tokenizer: Any) -> PromptFormat | None:
    """The format stored with a tokenizer (``None``: none stored, prompts used as they are)."""
    raw = (getattr(tokenizer, "init_kwargs", None) or {}).get(KEY)
    if not isinstance(raw, dict) or raw.get("kind") not in KINDS:
        return None
    sep = raw.get("separator", "")
    return PromptFormat(raw["kind"], sep if isinstance(sep, str) else "")


def set_format(tokenizer: Any, fmt: PromptFormat | None) -> None:
    """Store ``fmt`` with the tokenizer (saved by ``save_pretrained``); ``None`` removes it."""
    kwargs = tokenizer.init_kwargs
    if fmt is None:
        kwargs.pop(KEY, None)
    else:
        kwargs[KEY] = fmt.to_json()


def is_messages(text: Any) -> bool:
    return isinstance(text, list)


def detect(prompts: Iterable[Any], separator: str = "") -> PromptFormat | None:
    """The format training data implies: all message lists -> chat, all strings -> raw with
    ``separator``, both kinds (or none) -> ``None``."""
    kinds = {is_messages(p) for p in prompts}
    if kinds == {True}:
        return PromptFormat("chat")
    if kinds == {False}:
        return PromptFormat("raw", separator)
    return None


def adapt(tokenizer: Any, prompt: Any, response: Any = None) -> tuple[Any, Any]:
    """``(prompt, response)`` as the model was trained to see them (rules in the module
    docstring); ``response`` may be ``None``."""
    fmt = get_format(tokenizer)
    if fmt is None:
        return prompt, response
    if fmt.kind == "chat":
        if not is_messages(prompt):
            prompt = [{"role": "user", "content": str(prompt)}]
            if response is not None and not is_messages(response):
                response = [{"role": "assistant", "content": str(response)}]
        return prompt, response
    if is_messages(prompt):
        raise PromptFormatError(
            "this model was trained on plain-string prompts (prompt_format 'raw' in its "
            "tokenizer_config.json), but the prompts are chat messages; give plain-string "
            "prompts as in its training data"
        )
    text = str(prompt)
    if fmt.separator and not text.endswith(fmt.separator):
        text += fmt.separator
    return text, response


def glued_fraction(pairs: Iterable[tuple[str, str]], separator: str = "") -> float:
    """Share of raw (prompt, response) pairs joined with no whitespace or punctuation between a
    word character at the end of the prompt and one at the start of the response."""
    n = glued = 0
    for prompt, response in pairs:
        if not isinstance(prompt, str) or not isinstance(response, str):
            continue
        n += 1
        left = prompt + separator
        if left and response and left[-1].isalnum() and response[0].isalnum():
            glued += 1
    return glued / n if n else 0.0


def decide(tokenizer: Any, prompts: list[Any], choice: str = "auto", separator: str = "") -> str:
    """Set the format SFT trains ``tokenizer``'s model with, from its data's ``prompts``, and say
    what was decided (one line for the log).

    ``choice`` ``"chat"`` / ``"raw"`` forces it. ``"auto"``: a model that already has a format
    keeps it while the data fits it (plain-string prompts fit a chat model as user messages); a
    raw model given message data becomes chat; otherwise the data decides (all messages -> chat,
    all strings -> raw with ``separator``; both kinds -> none stored, each used as it is).
    """
    if choice not in ("auto", *KINDS):
        raise ValueError(f"prompt_format: {choice!r} is not one of auto, chat, raw")
    old = get_format(tokenizer)
    data = detect(prompts, separator)
    if choice != "auto":
        new: PromptFormat | None = PromptFormat(choice, separator if choice == "raw" else "")
        if new.kind == "raw" and any(is_messages(p) for p in prompts):
            raise PromptFormatError(
                "--prompt-format raw: the training data has chat-message prompts; use "
                "--prompt-format chat or auto"
            )
    elif old is not None and (old.kind == "chat" or (data is not None and data.kind == "raw")):
        new = old
        if separator and old.kind == "raw" and separator != old.separator:
            new = PromptFormat("raw", separator)
    else:
        new = data
    set_format(tokenizer, new)
    if new is None:
        return "prompt format: none stored (the data mixes chat messages and plain strings)"
    how = (
        "kept from the model"
        if new == old
        else ("as asked" if choice != "auto" else "from the data")
    )
    return f"prompt format: {new.describe()}, {how}; saved in tokenizer_config.json"
