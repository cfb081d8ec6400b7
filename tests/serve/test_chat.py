"""Chat driven through stdin: multi-round history, clear, quit, streaming."""

from __future__ import annotations

import io

import pytest

from simple_rlhf.config import load_config
from simple_rlhf.serve.chat import ChatConfig, ChatSession, chat_loop


@pytest.fixture(scope="module")
def session(tiny_sft):
    from simple_rlhf.models.loading import load_causal_lm, load_tokenizer

    tok = load_tokenizer(str(tiny_sft), padding_side="left")
    model = load_causal_lm(str(tiny_sft), tok, dropout=0.0).eval()
    cfg = load_config(ChatConfig, overrides={"path": str(tiny_sft), "max_new_tokens": 24})
    return ChatSession(model, tok, cfg)


def test_multi_round_clear_quit(session):
    session.clear()
    stdin = io.StringIO(
        "What color is each of these: sky?\n说出这些东西的颜色：天空。\nclear\n"
        "What color is each of these: snow?\nquit\nnever read\n"
    )
    stdout = io.StringIO()
    assert chat_loop(session, stdin, stdout) == 3
    out = stdout.getvalue()
    assert out.count("Assistant: ") == 3
    assert "(conversation cleared)" in out
    # after clear, only the last round is in the history
    assert [m["role"] for m in session.history] == ["user", "assistant"]
    assert session.history[0]["content"].endswith("snow?")
    assert "never read" not in out


def test_history_is_rendered_with_the_chat_template(session):
    session.clear()
    first = session.reply("What color is each of these: sky?")
    session.reply("What color is each of these: grass?")
    assert session.history[1] == {"role": "assistant", "content": first}
    text = session.tokenizer.decode(session._prompt_ids())
    # two finished rounds plus the generation prompt of the next answer
    assert text.count("<|user|>") == 2 and text.count("<|assistant|>") == 3
    assert text.endswith("<|assistant|>\n")


def test_streamed_text_equals_the_answer(session):
    session.clear()
    out = io.StringIO()
    answer = session.reply("What color is each of these: snow, sky?", out=out)
    assert out.getvalue().strip() == answer
    assert "snow is" in answer


def test_end_of_input_ends_the_loop(session):
    assert chat_loop(session, io.StringIO(""), io.StringIO()) == 0
