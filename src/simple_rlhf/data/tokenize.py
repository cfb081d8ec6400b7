"""Records -> token ids, with the prompt/response boundary made explicit.

The rule, for every format:

* **Conversational** records are rendered with the tokenizer's chat template. The prompt is the
  template applied to the prompt messages with the generation prompt (e.g. ``<|assistant|>\\n``);
  the response is what the full conversation adds after that text. A template whose full rendering
  does not start with the prompt rendering is reported, not guessed around.
* **Raw** records are used as they are: prompt text, then response text (plus the separator the
  model's stored prompt format names, ``data/prompt_format.py``, which also sends plain-string
  prompts to a chat-trained model as user messages).
* Prompt and response are tokenized **separately** and concatenated, so no BPE merge crosses the
  boundary and the label mask is exact. BOS is prepended when the tokenizer adds one by default and
  the text does not already carry it.
* Every response ends with EOS (appended if the text does not end in it); trailing whitespace after
  the template's end-of-turn is not trained on. The pad token is never EOS (see models/loading).
* Too long: a prompt over ``max_prompt_len`` or an example over ``max_seq_len`` is dropped
  (``truncation="drop"``, the default) or cut (``"truncate"``: prompt from the left keeping BOS,
  response from the right). Both are counted in :class:`EncodeStats` and reported by the trainers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from simple_rlhf.data.prompt_format import adapt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100

# Used for conversational data when a (base) tokenizer ships no chat template: the hh-rlhf /
# DeepSpeed-Chat transcript style, so base models like OPT see the format they were tuned on.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ '\n\nHuman: ' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ '\n\nAssistant: ' + m['content'] + eos_token }}"
    "{% else %}{{ m['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n\nAssistant:' }}{% endif %}"
)


class TemplateError(ValueError):
    """The chat template cannot separate prompt from response."""


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a tokenizer without a chat template the transcript-style fallback (saved with it)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE


def is_conversational(text: Any) -> bool:
    return isinstance(text, list)


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Any) -> str:
    """The prompt as text: chat template with generation prompt, or the raw string, after the
    model's stored prompt format is applied (``data/prompt_format.py``)."""
    prompt, _ = adapt(tokenizer, prompt)
    if is_conversational(prompt):
        ensure_chat_template(tokenizer)
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return str(prompt)


def render_response(tokenizer: PreTrainedTokenizerBase, prompt: Any, response: Any) -> str:
    """The response as text: what the rendered conversation adds after the rendered prompt."""
    prompt, response = adapt(tokenizer, prompt, response)
    if is_conversational(prompt) or is_conversational(response):
        if not (is_conversational(prompt) and is_conversational(response)):
            raise TemplateError("prompt and response must both be messages or both be strings")
        prompt_text = render_prompt(tokenizer, prompt)
        full = tokenizer.apply_chat_template(prompt + response, tokenize=False)
        if not full.startswith(prompt_text):
            # Some templates only emit the assistant header with the message; fall back to the
            # rendering without the generation prompt as the boundary.
            bare = tokenizer.apply_chat_template(prompt, tokenize=False)
            if not full.startswith(bare):
                raise TemplateError(
                    "the chat template renders the prompt differently with and without the "
                    "response; cannot find the prompt/response boundary"
                )
            return full[len(bare) :]
        return full[len(prompt_text) :]
    return str(response)


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == tokenizer.bos_token_id


# No token of a real vocabulary spans this many characters: a text longer than this many
# characters per allowed token is over the limit for sure, and is cut before it is tokenized
# (a 10 MB prompt used to be tokenized in full, ~240x its size in memory, only to be dropped).
CHARS_PER_TOKEN_BOUND = 256


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: Any, max_tokens: int | None = None
) -> list[int]:
    """Token ids of a prompt (BOS first when the tokenizer uses one)."""
    return _prompt_ids(tokenizer, prompt, max_tokens)[0]


def _prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: Any, max_tokens: int | None
) -> tuple[list[int], bool]:
    """:func:`encode_prompt`, and whether the text was cut first (to its last
    ``max_tokens x CHARS_PER_TOKEN_BOUND`` characters: only a prompt over the limit is)."""
    text = render_prompt(tokenizer, prompt)
    cut = max_tokens is not None and len(text) > max_tokens * CHARS_PER_TOKEN_BOUND
    if cut:
        text = text[-max_tokens * CHARS_PER_TOKEN_BOUND :]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if _adds_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        ids = [tokenizer.bos_token_id] + ids
    return ids, cut


def encode_response(tokenizer: PreTrainedTokenizerBase, prompt: Any, response: Any) -> list[int]:
    """Token ids of a response, ending with exactly one EOS."""
    return _response_ids(tokenizer, prompt, response, None)[0]


def _response_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: Any, response: Any, max_tokens: int | None
) -> tuple[list[int], bool]:
    """:func:`encode_response`, and whether the text was cut first (to its first
    ``max_tokens x CHARS_PER_TOKEN_BOUND`` characters)."""
    text = render_response(tokenizer, prompt, response)
    eos = tokenizer.eos_token
    stripped = text.rstrip()
    if stripped.endswith(eos):
        stripped = stripped[: -len(eos)]
    cut = max_tokens is not None and len(stripped) > max_tokens * CHARS_PER_TOKEN_BOUND
    if cut:
        stripped = stripped[: max_tokens * CHARS_PER_TOKEN_BOUND]
    ids = tokenizer(stripped, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id], cut


def _encode_example(
    tokenizer: PreTrainedTokenizerBase, prompt: Any, responses: Sequence[Any], limits: Limits
) -> tuple[list[int], list[list[int]], bool]:
    """A prompt and its responses as ids, texts far over the limits cut before tokenizing;
    the flag says one was (the example is then over its limit)."""
    p, cut = _prompt_ids(tokenizer, prompt, limits.max_prompt_len)
    out = []
    for r in responses:
        ids, r_cut = _response_ids(tokenizer, prompt, r, limits.max_seq_len)
        out.append(ids)
        cut = cut or r_cut
    return p, out, cut


@dataclasses.dataclass
class EncodeStats:
    """How many examples were kept, dropped or truncated for length."""

    kept: int = 0
    dropped: int = 0
    truncated: int = 0
    identical: int = 0  # pairs whose chosen and rejected responses are the same: no signal
    sources: str = ""  # how many records of each source were read (data.sources.describe_usage)

    def describe(self) -> str:
        text = f"{self.kept} kept, {self.dropped} dropped as too long, {self.truncated} truncated"
        text += f", {self.identical} identical pairs dropped" if self.identical else ""
        return text + (f" [{self.sources}]" if self.sources else "")


@dataclasses.dataclass(frozen=True)
class Limits:
    max_seq_len: int
    max_prompt_len: int
    truncation: str = "drop"


def _fit(
    prompt_ids: list[int],
    responses: Sequence[list[int]],
    limits: Limits,
    stats: EncodeStats,
    bos_id: int | None,
    cut: bool = False,
) -> tuple[list[int], list[list[int]]] | None:
    """Apply the length policy to a prompt and its response(s); None when dropped. ``cut``: a
    text was cut before tokenizing (far over the limit), so the example is too long."""
    too_long_prompt = len(prompt_ids) > limits.max_prompt_len
    longest = max((len(r) for r in responses), default=0)
    too_long = cut or len(prompt_ids) + longest > limits.max_seq_len
    if not (too_long_prompt or too_long):
        stats.kept += 1
        return prompt_ids, list(responses)
    if limits.truncation == "drop":
        stats.dropped += 1
        return None
    if too_long_prompt:
        keep_bos = bool(prompt_ids) and bos_id is not None and prompt_ids[0] == bos_id
        tail = prompt_ids[-(limits.max_prompt_len - keep_bos) :]
        prompt_ids = ([bos_id] if keep_bos else []) + tail
    room = limits.max_seq_len - len(prompt_ids)
    responses = [r[:room] for r in responses]
    stats.kept += 1
    stats.truncated += 1
    return prompt_ids, responses


def encode_sft(
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Any],
    limits: Limits,
    train_on_prompt: bool = False,
) -> tuple[list[dict[str, list[int]]], EncodeStats]:
    """SFT examples: ``input_ids`` and ``labels`` (prompt labels = -100 unless train_on_prompt)."""
    stats, out = EncodeStats(), []
    for rec in records:
        prompt_ids, (response_ids,), cut = _encode_example(
            tokenizer, rec.prompt, [rec.response], limits
        )
        fitted = _fit(prompt_ids, [response_ids], limits, stats, tokenizer.bos_token_id, cut)
        if fitted is None:
            continue
        p, (r,) = fitted
        prompt_labels = list(p) if train_on_prompt else [IGNORE_INDEX] * len(p)
        out.append({"input_ids": p + r, "labels": prompt_labels + r})
    return out, stats


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, records: Sequence[Any], limits: Limits
) -> tuple[list[dict[str, list[int]]], EncodeStats]:
    """Preference pairs: ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (responses end in EOS)."""
    stats, out = EncodeStats(), []
    for rec in records:
        prompt_ids, (chosen, rejected), cut = _encode_example(
            tokenizer, rec.prompt, [rec.chosen, rec.rejected], limits
        )
        if chosen == rejected:  # the same answer twice teaches nothing (and breaks RM statistics)
            stats.identical += 1
            continue
        fitted = _fit(prompt_ids, [chosen, rejected], limits, stats, tokenizer.bos_token_id, cut)
        if fitted is None:
            continue
        p, (c, r) = fitted
        out.append({"prompt_ids": p, "chosen_ids": c, "rejected_ids": r})
    return out, stats


def encode_unpaired(
    tokenizer: PreTrainedTokenizerBase, records: Sequence[Any], limits: Limits
) -> tuple[list[dict[str, Any]], EncodeStats]:
    """Unpaired (KTO) examples: ``prompt_ids``, ``completion_ids``, ``label`` (bool)."""
    stats, out = EncodeStats(), []
    for rec in records:
        prompt_ids, (completion,), cut = _encode_example(
            tokenizer, rec.prompt, [rec.completion], limits
        )
        fitted = _fit(prompt_ids, [completion], limits, stats, tokenizer.bos_token_id, cut)
        if fitted is None:
            continue
        p, (c,) = fitted
        out.append({"prompt_ids": p, "completion_ids": c, "label": bool(rec.label)})
    return out, stats


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, records: Sequence[Any], limits: Limits
) -> tuple[list[dict[str, Any]], EncodeStats]:
    """Prompts for generation: ``prompt_ids``, plus ``prompt`` (the original) and ``fields``."""
    stats, out = EncodeStats(), []
    for rec in records:
        prompt_ids, cut = _prompt_ids(tokenizer, rec.prompt, limits.max_prompt_len)
        if cut or len(prompt_ids) > limits.max_prompt_len:
            if limits.truncation == "drop":
                stats.dropped += 1
                continue
            keep_bos = prompt_ids[0] == tokenizer.bos_token_id
            prompt_ids = ([prompt_ids[0]] if keep_bos else []) + prompt_ids[
                -(limits.max_prompt_len - keep_bos) :
            ]
            stats.truncated += 1
        stats.kept += 1
        out.append(
            {"prompt_ids": prompt_ids, "prompt": rec.prompt, "fields": dict(rec.fields or {})}
        )
    return out, stats


# --- batching ----------------------------------------------------------------------------------


def pad(seqs: Sequence[Sequence[int]], value: int, side: str = "right"):
    """Pad lists of ids into a ``[B, max_len]`` long tensor on the given side."""
    import torch

    n = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), n), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        t = torch.as_tensor(list(s), dtype=torch.long)
        if side == "right":
            out[i, : len(s)] = t
        else:
            out[i, n - len(s) :] = t
    return out


def collate_sft(batch: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """``input_ids`` / ``attention_mask`` / ``labels`` ``[B, T]``, right-padded."""
    ids = [b["input_ids"] for b in batch]
    input_ids = pad(ids, pad_id)
    mask = pad([[1] * len(s) for s in ids], 0)
    labels = pad([b["labels"] for b in batch], IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def collate_pairs(batch: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Chosen and rejected concatenated into one ``[2B, T]`` batch (chosen rows first).

    ``labels`` hold the response tokens (prompt = -100), so one forward pass serves both halves.
    """
    seqs, labels = [], []
    for key in ("chosen_ids", "rejected_ids"):
        for b in batch:
            seqs.append(b["prompt_ids"] + b[key])
            labels.append([IGNORE_INDEX] * len(b["prompt_ids"]) + b[key])
    return {
        "input_ids": pad(seqs, pad_id),
        "attention_mask": pad([[1] * len(s) for s in seqs], 0),
        "labels": pad(labels, IGNORE_INDEX),
    }
