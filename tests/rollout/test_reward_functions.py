"""Built-in example reward functions: format regex, length penalty, math exact match."""

from __future__ import annotations

import pytest

from simple_rlhf.rollout.rewards import (
    build_reward,
    extract_answer,
    format_reward,
    length_penalty,
    load_reward_function,
    math_exact_match,
    normalize_answer,
)


def test_format_reward_default_and_custom_pattern():
    texts = ["so \\boxed{4}", "#### 12", "the answer is 4", "####"]
    assert format_reward([""] * 4, texts) == [1.0, 1.0, 0.0, 0.0]
    assert format_reward([""] * 2, ["<a>x</a>", "x"], pattern=r"^<a>.*</a>$") == [1.0, 0.0]


def test_length_penalty():
    """3 words -> -0.03; empty -> 0 (written as -0.0)."""
    assert length_penalty(["", ""], ["a b c", ""]) == pytest.approx([-0.03, 0.0], rel=1e-6)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("x \\boxed{1} then \\boxed{\\frac{1}{2}} end", "\\frac{1}{2}"),
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("#### 1,000\nmore", "1,000"),
        ("no answer", None),
        ("\\boxed{unclosed", None),
    ],
)
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_normalize_answer():
    assert normalize_answer(" $1,000.0.") == "1000"
    assert normalize_answer("0.50") == "0.5"
    assert normalize_answer("\\frac{1}{2}") == "\\frac{1}{2}"


def test_math_exact_match_reads_the_reference_field():
    """GSM8K-style reference "... #### 72" -> 72; boxed and #### responses both compared after
    normalisation; a response without an answer scores 0."""
    responses = ["so \\boxed{72}", "#### 72.0", "72", "\\boxed{71}"]
    refs = ["She sold 72 #### 72"] * 4
    assert math_exact_match([""] * 4, responses, answer=refs) == [1.0, 1.0, 0.0, 0.0]
    assert math_exact_match(["", ""], ["\\boxed{3}", "x"], solution=["3", "3"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="reference-answer column"):
        math_exact_match([""], ["\\boxed{3}"], other=["3"])


def test_builtins_are_registered_and_errors_name_them():
    assert load_reward_function("math_exact_match") is math_exact_match
    reward = build_reward(None, ["format", "length_penalty", "math_exact_match"], [1.0, 1.0, 2.0])
    total, per = reward.evaluate(["q"], ["\\boxed{5}"], answer=["5"])
    assert per == {"format": [1.0], "length_penalty": [-0.01], "math_exact_match": [1.0]}
    assert total == pytest.approx([1.0 - 0.01 + 2.0])
    with pytest.raises(RuntimeError, match="'math_exact_match' raised ValueError"):
        reward.evaluate(["q"], ["\\boxed{5}"])


def test_a_function_without_kwargs_gets_only_the_columns_it_names():
    """Issue 16: the data's other columns (e.g. an SFT file's ``response``) are not forced on a
    reward function that does not take ``**kwargs``."""
    from simple_rlhf.rollout.rewards import call_reward

    def exact(prompts, completions, answer):
        return [float(c == a) for c, a in zip(completions, answer, strict=True)]

    def bare(prompts, completions):
        return [1.0 for _ in completions]

    cols = {"answer": ["4", "5"], "response": ["x", "y"]}
    assert call_reward("exact", exact, ["a", "b"], ["4", "6"], **cols) == [1.0, 0.0]
    assert call_reward("bare", bare, ["a", "b"], ["4", "6"], **cols) == [1.0, 1.0]
