"""Raw record -> normalised record conversions, and their errors (field named in each)."""

from __future__ import annotations

import dataclasses

import pytest

from simple_rlhf.data.errors import DataError, RecordError
from simple_rlhf.data.records import (
    PairRecord,
    PromptRecord,
    SFTRecord,
    UnpairedRecord,
    pair_to_unpaired,
    primary_kind,
    record_kinds,
    split_transcripts,
    to_kind,
    to_pair,
    to_prompt,
    to_sft,
    to_unpaired,
)


def u(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def a(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def s(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


def fails(fn, raw, field: str | None, *words: str) -> RecordError:
    with pytest.raises(RecordError) as info:
        fn(raw)
    assert info.value.field == field, str(info.value)
    for word in words:
        assert word in str(info.value), str(info.value)
    return info.value


# ----------------------------------------------------------------------------- errors
def test_data_error_message_names_source_record_and_field():
    err = DataError.at("data/train.jsonl", 17, "chosen", "expected a string, got int")
    assert str(err) == "data/train.jsonl, record 17, field 'chosen': expected a string, got int"
    assert isinstance(err, ValueError) and (err.source, err.index, err.field) == (
        "data/train.jsonl",
        17,
        "chosen",
    )
    located = RecordError("label", "bad").at("x.csv", 3)
    assert str(located) == "x.csv, record 3, field 'label': bad"
    assert str(DataError("file not found", source="a.json")) == "a.json: file not found"


# ----------------------------------------------------------------------------- SFT
def test_sft_from_messages_splits_off_the_last_assistant_message():
    raw = {"messages": [s("be nice"), u("hi"), a("hello"), u("how are you?"), a("fine")]}
    rec = to_sft(raw)
    assert rec == SFTRecord([s("be nice"), u("hi"), a("hello"), u("how are you?")], [a("fine")])


def test_sft_message_dicts_are_normalised_to_role_and_content():
    rec = to_sft({"messages": [{"role": "user", "content": "q", "name": "x"}, a("r")]})
    assert rec.prompt == [u("q")]


@pytest.mark.parametrize(
    "raw, field, words",
    [
        ({"messages": [u("hi")]}, "messages", ["last message must have role 'assistant'"]),
        ({"messages": [a("only")]}, "messages", ["at least one message before"]),
        ({"messages": [u("q"), a("  ")]}, "messages", ["empty response"]),
        ({"messages": []}, "messages", ["empty list of messages"]),
        ({"messages": "hi"}, "messages", ["expected a list of messages, got str"]),
        ({"messages": [u("q"), "a"]}, "messages", ["message 1", "got str"]),
        ({"messages": [{"role": "bot", "content": "q"}, a("r")]}, "messages", ["'bot'"]),
        ({"messages": [{"role": "user", "content": 3}, a("r")]}, "messages", ["got int"]),
        ({"messages": [u("q"), a("x"), a("y")]}, "messages", ["end before an assistant"]),
        ({"prompt": "q"}, "response", ["missing", "['prompt']"]),
        ({"text": "q"}, "messages", ["missing", "['text']"]),
        ({"prompt": "q", "response": ""}, "response", ["empty string"]),
        ({"prompt": "", "response": "r"}, "prompt", ["empty string"]),
        ({"prompt": "q", "response": 5}, "response", ["expected a string or a list", "got int"]),
        ({"prompt": None, "response": "r"}, "prompt", ["got null"]),
        ({"prompt": [u("q")], "response": "r"}, "response", ["is a string but 'prompt' is a list"]),
        ({"prompt": [u("q")], "response": [u("r")]}, "response", ["start with an assistant"]),
        ({"prompt": "q", "completion": "r", "label": False}, "label", ["undesirable"]),
        (["not", "a", "dict"], None, ["expected an object (a record), got list"]),
    ],
)
def test_sft_errors_name_the_field(raw, field, words):
    fails(to_sft, raw, field, *words)


def test_sft_from_prompt_response_completion_and_chosen():
    assert to_sft({"prompt": "Q:", "response": " r"}) == SFTRecord("Q:", " r")
    conv = {"prompt": [u("q")], "completion": [a("r")], "label": True}
    assert to_sft(conv) == SFTRecord([u("q")], [a("r")])
    assert to_sft({"prompt": "q", "chosen": "c", "rejected": "x"}) == SFTRecord("q", "c")
    # prompt-less pair: the chosen side is the demonstration
    pair = {"chosen": [u("q"), a("c")], "rejected": [u("q"), a("x")]}
    assert to_sft(pair) == SFTRecord([u("q")], [a("c")])


# ----------------------------------------------------------------------------- pairs
def test_pair_with_explicit_prompt_raw_and_conversational():
    assert to_pair({"prompt": "Q?", "chosen": " y", "rejected": " n"}) == PairRecord(
        "Q?", " y", " n"
    )
    conv = {"prompt": [u("q")], "chosen": [a("y")], "rejected": [a("n")]}
    assert to_pair(conv) == PairRecord([u("q")], [a("y")], [a("n")])


def test_pair_whole_dialogue_chosen_loses_the_repeated_prompt():
    raw = {"prompt": [u("q")], "chosen": [u("q"), a("y")], "rejected": [a("n")]}
    assert to_pair(raw) == PairRecord([u("q")], [a("y")], [a("n")])


def test_prompt_less_conversations_split_before_the_first_differing_assistant_turn():
    chosen = [s("sys"), u("hi"), a("hello"), u("how?"), a("fine")]
    rejected = [s("sys"), u("hi"), a("hello"), u("how?"), a("bad")]
    rec = to_pair({"chosen": chosen, "rejected": rejected})
    assert rec == PairRecord(chosen[:4], [a("fine")], [a("bad")])


def test_prompt_less_conversations_differing_in_a_user_turn_back_off_to_an_assistant_turn():
    """Common prefix [u("hi"), a("hello")] (2 messages); message 2 is a user turn, so back off
    to k=1: prompt [u("hi")], each response starts with a("hello")."""
    chosen = [u("hi"), a("hello"), u("x"), a("1")]
    rejected = [u("hi"), a("hello"), u("y"), a("2")]
    rec = to_pair({"chosen": chosen, "rejected": rejected})
    assert rec == PairRecord([u("hi")], chosen[1:], rejected[1:])


def test_identical_chosen_and_rejected_is_a_valid_pair():
    conv = [u("q"), a("same")]
    assert to_pair({"chosen": conv, "rejected": conv}) == PairRecord(
        [u("q")], [a("same")], [a("same")]
    )
    assert to_pair({"chosen": "Q? same", "rejected": "Q? same"}) == PairRecord(
        "Q?", " same", " same"
    )


def test_raw_strings_split_at_common_prefix_backed_off_to_whitespace():
    """LCP("How are you? fine", "How are you? no") = "How are you? " (13 chars); index 12 is the
    space after "?", so prompt = "How are you?" and the responses keep their leading space."""
    rec = to_pair({"chosen": "How are you? fine", "rejected": "How are you? no"})
    assert rec == PairRecord("How are you?", " fine", " no")
    # LCP "Human: hi Assistant: fi" ends inside a word: back off to the space before "fi"
    rec = to_pair({"chosen": "Human: hi Assistant: fine", "rejected": "Human: hi Assistant: fire"})
    assert rec == PairRecord("Human: hi Assistant:", " fine", " fire")


def test_raw_strings_without_whitespace_split_at_the_character_boundary():
    rec = to_pair({"chosen": "你好吗？很好", "rejected": "你好吗？不好"})
    assert rec == PairRecord("你好吗？", "很好", "不好")


def test_hh_transcripts_split_after_the_last_assistant_marker():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: Why did the hen"
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: No."
    rec = to_pair({"chosen": chosen, "rejected": rejected})
    prompt = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant:"
    assert rec == PairRecord(prompt, " Why did the hen", " No.")
    # the response starting with "Why" shares "W" with a "What" response: the LCP rule would cut
    # inside the word, the transcript rule does not
    rec = to_pair({"chosen": prompt + " Why", "rejected": prompt + " What"})
    assert rec.chosen == " Why" and rec.rejected == " What"


def test_hh_transcripts_with_different_prompts_fall_back_to_common_prefix():
    chosen = "\n\nHuman: hi\n\nAssistant: a\n\nHuman: x\n\nAssistant: yes"
    rejected = "\n\nHuman: hi\n\nAssistant: a\n\nHuman: y\n\nAssistant: no"
    prompt, c, r = split_transcripts(chosen, rejected)
    # LCP ends right after "Human: "; back off to the space before it: prompt ends "Human:"
    assert prompt == "\n\nHuman: hi\n\nAssistant: a\n\nHuman:"
    assert (c, r) == (" x\n\nAssistant: yes", " y\n\nAssistant: no")


@pytest.mark.parametrize(
    "raw, field, words",
    [
        ({"prompt": "q", "chosen": "c"}, "rejected", ["missing", "['chosen', 'prompt']"]),
        ({"rejected": "c"}, "chosen", ["missing"]),
        ({"prompt": "q", "chosen": 1, "rejected": "r"}, "chosen", ["got int"]),
        ({"prompt": "q", "chosen": "c", "rejected": " \n"}, "rejected", ["empty string"]),
        ({"prompt": "q", "chosen": [], "rejected": "r"}, "chosen", ["empty list"]),
        ({"chosen": "abc", "rejected": "xyz"}, "chosen", ["no common prefix"]),
        ({"chosen": "abc", "rejected": [a("x")]}, "rejected", ["both be strings"]),
        ({"chosen": [u("a"), a("b")], "rejected": [u("c"), a("b")]}, "chosen", ["prompt"]),
        ({"prompt": [u("q"), a("x")], "chosen": [a("y")], "rejected": [a("n")]}, "prompt", []),
        ({"chosen": "Q\n\nHuman: x\n\nAssistant:", "rejected": "Q\n\nHuman: x\n\nAssistant:"},
         "chosen", ["empty response"]),
    ],
)  # fmt: skip
def test_pair_errors_name_the_field(raw, field, words):
    fails(to_pair, raw, field, *words)


# ----------------------------------------------------------------------------- prompts
def test_prompt_keeps_extra_fields_read_only():
    rec = to_prompt({"prompt": "2+2=", "answer": "4", "id": 7})
    assert rec == PromptRecord("2+2=", {"answer": "4", "id": 7})
    with pytest.raises(TypeError):
        rec.fields["answer"] = "5"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.prompt = "x"  # type: ignore[misc]


def test_prompt_from_messages_and_pairs():
    assert to_prompt({"messages": [u("q"), a("r")]}).prompt == [u("q")]
    assert to_prompt({"messages": [s("x"), u("q")]}).prompt == [s("x"), u("q")]
    pair = to_prompt({"chosen": "Q? yes", "rejected": "Q? no"})
    assert pair.prompt == "Q?" and pair.fields["chosen"] == "Q? yes"
    fails(to_prompt, {"question": "q"}, "prompt", "missing")
    fails(to_prompt, {"prompt": 3}, "prompt", "got int")


# ----------------------------------------------------------------------------- unpaired
def test_unpaired_records_and_label_type():
    assert to_unpaired({"prompt": "q", "completion": "c", "label": False}) == UnpairedRecord(
        "q", "c", False
    )
    fails(to_unpaired, {"prompt": "q", "completion": "c", "label": 1}, "label", "got int 1")
    fails(to_unpaired, {"prompt": "q", "completion": "c", "label": "true"}, "label", "got str")
    fails(to_unpaired, {"prompt": "q", "completion": "c"}, "label", "missing")
    fails(to_unpaired, {"prompt": "q", "label": True}, "completion", "missing")


def test_pairs_split_into_two_unpaired_records():
    pair = PairRecord("q", "good", "bad")
    assert pair_to_unpaired(pair) == [
        UnpairedRecord("q", "good", True),
        UnpairedRecord("q", "bad", False),
    ]
    assert to_kind({"prompt": "q", "chosen": "good", "rejected": "bad"}, "unpaired") == (
        pair_to_unpaired(pair)
    )
    with pytest.raises(ValueError, match="unknown record kind"):
        to_kind({"prompt": "q"}, "dpo")


def test_record_kinds_and_primary_kind():
    pair = {"prompt": "q", "chosen": "c", "rejected": "r"}
    assert record_kinds(pair) == {"sft", "pair", "prompt", "unpaired"}
    assert record_kinds({"messages": [u("q"), a("r")]}) == {"sft", "prompt"}
    assert record_kinds({"prompt": "q", "completion": "c", "label": True}) == {
        "sft",
        "prompt",
        "unpaired",
    }
    assert record_kinds({"prompt": "q", "completion": "c", "label": False}) == {
        "prompt",
        "unpaired",
    }
    assert record_kinds({"prompt": "q", "answer": "4"}) == {"prompt"}
    assert record_kinds({"prompt": ""}) == set()
    assert [
        primary_kind(r)
        for r in (pair, {"messages": []}, {"prompt": "q", "completion": "c", "label": 1}, {})
    ] == ["pair", "sft", "unpaired", None]
    assert primary_kind({"prompt": "q"}) == "prompt"
