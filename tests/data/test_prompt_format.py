"""How prompts are rendered is decided once, saved with the tokenizer, and applied everywhere
(issue 16, defects 2, 5 and 6)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from simple_rlhf.data import prompt_format as pf
from simple_rlhf.data.cache import tokenizer_fingerprint
from simple_rlhf.data.records import SFTRecord
from simple_rlhf.data.tokenize import encode_prompt, encode_response, render_prompt
from simple_rlhf.trainers.sft import SFTArgs, decide_prompt_format


@pytest.fixture()
def tok(tiny_base):
    return AutoTokenizer.from_pretrained(tiny_base)


USER = [{"role": "user", "content": "What is 2 + 2?"}]


def test_no_stored_format_uses_prompts_as_they_are(tok):
    assert pf.get_format(tok) is None
    assert render_prompt(tok, "What is 2 + 2?") == "What is 2 + 2?"
    assert render_prompt(tok, USER).startswith("<|user|>")


def test_chat_model_gets_plain_prompts_as_user_messages(tok):
    """Defect 6 / 2: a chat-trained model given a plain-string prompt (RL prompts, eval file) sees
    exactly the input it was trained on."""
    pf.set_format(tok, pf.PromptFormat("chat"))
    assert encode_prompt(tok, "What is 2 + 2?") == encode_prompt(tok, USER)
    answer = [{"role": "assistant", "content": "4"}]
    assert encode_response(tok, "What is 2 + 2?", "4") == encode_response(tok, USER, answer)


def test_raw_model_appends_its_separator_and_refuses_messages(tok):
    """Defect 2 / 5: a plain-text model is prompted with plain text plus the separator it was
    trained with; chat messages are a clear error, not a silently different input."""
    pf.set_format(tok, pf.PromptFormat("raw", "\nAnswer: "))
    assert render_prompt(tok, "What is 2 + 2?") == "What is 2 + 2?\nAnswer: "
    assert render_prompt(tok, "What is 2 + 2?\nAnswer: ") == "What is 2 + 2?\nAnswer: "
    with pytest.raises(pf.PromptFormatError, match="plain-string prompts"):
        render_prompt(tok, USER)


def test_format_is_saved_with_the_tokenizer_and_read_by_plain_transformers(tok, tmp_path):
    pf.set_format(tok, pf.PromptFormat("raw", "\n"))
    tok.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert saved["prompt_format"] == {"kind": "raw", "separator": "\n"}
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.init_kwargs["prompt_format"] == {"kind": "raw", "separator": "\n"}
    assert pf.get_format(again) == pf.PromptFormat("raw", "\n")


def test_format_changes_the_data_cache_key(tok):
    before = tokenizer_fingerprint(tok)
    pf.set_format(tok, pf.PromptFormat("raw", "\n"))
    assert tokenizer_fingerprint(tok) != before


@pytest.mark.parametrize(
    ("prompts", "old", "choice", "want"),
    [
        (["a", "b"], None, "auto", pf.PromptFormat("raw", " ")),
        ([USER, USER], None, "auto", pf.PromptFormat("chat")),
        (["a", USER], None, "auto", None),
        (["a", "b"], pf.PromptFormat("chat"), "auto", pf.PromptFormat("chat")),  # kept
        ([USER], pf.PromptFormat("raw", ""), "auto", pf.PromptFormat("chat")),  # raw -> chat
        (["a"], None, "chat", pf.PromptFormat("chat")),
    ],
)
def test_decide(tok, prompts, old, choice, want):
    pf.set_format(tok, old)
    line = pf.decide(tok, prompts, choice, " ")
    assert pf.get_format(tok) == want
    assert line.startswith("prompt format:")


def test_decide_raw_with_message_data_is_an_error(tok):
    with pytest.raises(pf.PromptFormatError, match="--prompt-format chat"):
        pf.decide(tok, [USER], "raw")


def test_glued_records_are_reported(tok):
    """Defect 5: plain prompts and responses joined with no separator are said, not hidden."""
    glued = [SFTRecord("What is 2 + 2", "4")] * 3 + [SFTRecord("What is 2 + 2? ", "4")]
    line = decide_prompt_format(tok, glued, SFTArgs())
    assert "75% of the plain-string records" in line and "--raw-separator" in line
    tok.init_kwargs.pop("prompt_format")
    line = decide_prompt_format(tok, glued, SFTArgs(raw_separator=" "))
    assert "--raw-separator" not in line and "' '" in line
    assert pf.glued_fraction([("a\n", "b"), ("a:", "b"), ("a", " b")]) == 0.0
