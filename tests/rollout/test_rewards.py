"""The reward-source interface: loading functions by name / module / file, weighted combinations,
errors that name the culprit, and the reward model as a source (normalised, clipped)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from simple_rlhf.data.tiny_task import gold_reward_batch
from simple_rlhf.rollout.rewards import (
    REWARD_FUNCTIONS,
    CombinedReward,
    RewardFunctionError,
    RewardModelSource,
    build_reward,
    call_reward,
    fields_to_columns,
    load_reward_function,
)

PROMPTS = ["What color is each of these: sky?", "What color is each of these: apple, snow?"]
RESPONSES = ["sky is blue.", "apple is red. snow is green."]


def test_builtin_tiny_gold():
    """Gold reward: 'sky is blue.' -> 1/1 = 1.0; 'apple red, snow green' -> 1/2 = 0.5."""
    fn = load_reward_function("tiny_gold")
    assert "tiny_gold" in REWARD_FUNCTIONS
    assert fn is gold_reward_batch
    assert fn(PROMPTS, RESPONSES) == [1.0, 0.5]


def test_module_function_spec():
    fn = load_reward_function("simple_rlhf.data.tiny_task:gold_reward_batch")
    assert fn is gold_reward_batch


def test_file_spec_with_fields(tmp_path):
    """A user file: reward = len(response) + bonus[i] (a per-prompt field). 'ab' -> 2 + 0.5."""
    f = tmp_path / "my_reward.py"
    f.write_text(
        "def length_reward(prompts, responses, bonus=None, **_):\n"
        "    return [len(r) + b for r, b in zip(responses, bonus)]\n"
    )
    fn = load_reward_function(f"{f}:length_reward")
    assert fn(["p", "q"], ["ab", ""], bonus=[0.5, 1.0]) == [2.5, 1.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_reward", "unknown reward function 'no_such_reward'.*tiny_gold"),
        ("simple_rlhf.data.tiny_task:nope", "no attribute 'nope'"),
        ("simple_rlhf.data.tiny_task:EN_FILLER", "not callable"),
        ("not_a_module_xyz:f", "cannot import 'not_a_module_xyz'"),
        ("/nonexistent/dir/r.py:f", "file not found"),
    ],
)
def test_load_errors_name_the_spec(spec, message):
    with pytest.raises(RewardFunctionError, match=message):
        load_reward_function(spec)


def test_file_with_import_error(tmp_path):
    f = tmp_path / "broken.py"
    f.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(
        RewardFunctionError, match="importing .*broken.py failed: RuntimeError: boom"
    ):
        load_reward_function(f"{f}:f")


def test_call_reward_errors_name_the_function():
    def raises(prompts, responses, **_):
        raise KeyError("answer")

    with pytest.raises(RewardFunctionError, match="'raiser' raised KeyError"):
        call_reward("raiser", raises, PROMPTS, RESPONSES)
    with pytest.raises(RewardFunctionError, match="'short' returned 1 scores for 2 responses"):
        call_reward("short", lambda p, r, **_: [1.0], PROMPTS, RESPONSES)
    with pytest.raises(RewardFunctionError, match="'scalar' must return a list"):
        call_reward("scalar", lambda p, r, **_: 1.0, PROMPTS, RESPONSES)
    with pytest.raises(RewardFunctionError, match="'texty' must return a list"):
        call_reward("texty", lambda p, r, **_: "ab", PROMPTS, RESPONSES)
    with pytest.raises(RewardFunctionError, match="'strs': score 1 is str"):
        call_reward("strs", lambda p, r, **_: [1.0, "x"], PROMPTS, RESPONSES)
    with pytest.raises(RewardFunctionError, match="'nan': score 0 is nan"):
        call_reward("nan", lambda p, r, **_: [math.nan, 1.0], PROMPTS, RESPONSES)


def test_call_reward_accepts_tensors_and_bools():
    assert call_reward("t", lambda p, r, **_: torch.tensor([1.5, -2.0]), PROMPTS, RESPONSES) == [
        1.5,
        -2.0,
    ]
    assert call_reward("b", lambda p, r, **_: [True, False], PROMPTS, RESPONSES) == [1.0, 0.0]


def test_combined_weighted_sum_and_per_source_means():
    """gold = [1.0, 0.5], length = [12, 28] (characters).
    0.5 * gold + 0.1 * length = [0.5 + 1.2, 0.25 + 2.8] = [1.7, 3.05];
    per-source means: gold 0.75, length 20."""
    length = lambda p, r, **_: [float(len(x)) for x in r]  # noqa: E731
    combo = CombinedReward({"gold": gold_reward_batch, "length": length}, [0.5, 0.1])
    total, per = combo.evaluate(PROMPTS, RESPONSES)
    assert total == pytest.approx([1.7, 3.05], rel=1e-6)
    assert combo(PROMPTS, RESPONSES) == pytest.approx([1.7, 3.05], rel=1e-6)
    assert CombinedReward.metrics(per) == {"reward/gold_mean": 0.75, "reward/length_mean": 20.0}


def test_combined_passes_fields_and_validates():
    seen = {}

    def spy(prompts, responses, answer=None, **_):
        seen["answer"] = answer
        return [0.0] * len(responses)

    CombinedReward([("spy", spy)])(PROMPTS, RESPONSES, answer=["a", "b"])
    assert seen["answer"] == ["a", "b"]
    with pytest.raises(RewardFunctionError, match="2 reward weights for 1 reward sources"):
        CombinedReward([("spy", spy)], [1.0, 2.0])
    with pytest.raises(RewardFunctionError, match="no reward source"):
        CombinedReward([])
    with pytest.raises(RewardFunctionError, match="'bad' returned 0 scores"):
        CombinedReward([("bad", lambda p, r, **_: [])])(PROMPTS, RESPONSES)


def test_build_reward_names_and_default_weights():
    combo = build_reward(None, ["tiny_gold", "simple_rlhf.data.tiny_task:gold_reward_batch"])
    assert combo.names == ["tiny_gold", "gold_reward_batch"]
    assert combo.weights == [1.0, 1.0]
    assert combo(PROMPTS, RESPONSES) == [2.0, 1.0]


def test_fields_to_columns():
    rows = [{"answer": "a"}, None, {"answer": "c", "id": 3}]
    assert fields_to_columns(rows) == {"answer": ["a", None, "c"], "id": [None, None, 3]}


def test_reward_model_source_normalises_and_clips(tiny_base, tmp_path):
    """An RM folder (tiny base + a fresh head) with stats mean 0.1, std 0.02: the source returns
    clamp((raw - 0.1) / 0.02, -3, 3) where raw is the head at the last real token (EOS)."""
    from simple_rlhf.models.loading import load_tokenizer
    from simple_rlhf.models.reward import STATS_FILE, load_reward_model, sequence_scores

    tok = load_tokenizer(str(tiny_base))
    torch.manual_seed(0)
    rm = load_reward_model(str(tiny_base), tok)
    rm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    (tmp_path / STATS_FILE).write_text(json.dumps({"mean": 0.1, "std": 0.02}))

    src = RewardModelSource(str(tmp_path), clip=3.0)
    assert not src.model.training
    assert not any(p.requires_grad for p in src.model.parameters())
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    got = src(prompts, RESPONSES)

    ids, mask, _ = src.scorer.encode(prompts, RESPONSES)
    last = mask.sum(1) - 1
    assert all(ids[i, last[i]] == tok.eos_token_id for i in range(2))  # read at EOS
    with torch.no_grad():
        raw = sequence_scores(src.model, ids, mask)
    want = ((raw - 0.1) / 0.02).clamp(-3.0, 3.0)
    assert got == pytest.approx(want.tolist(), rel=1e-5, abs=1e-6)
    unclipped = RewardModelSource(str(tmp_path))(prompts, RESPONSES)
    assert unclipped == pytest.approx(((raw - 0.1) / 0.02).tolist(), rel=1e-5, abs=1e-5)
