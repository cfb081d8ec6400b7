"""The tiny task: gold reward by hand, determinism, held-out prompts, label noise."""

from __future__ import annotations

import pytest

from simple_rlhf.data import tiny_task as t


def test_gold_reward_by_hand():
    """k = 2 things (sky: blue, lime: green).
    - ideal: 2/2 = 1.0
    - one wrong colour: 1/2 = 0.5
    - filler appended: 1.0 - 0.15 = 0.85
    - an extra statement about a thing not asked: 1.0 - 0.25 * 1 / 2 = 0.875
    - junk text: 1.0 - 0.2 = 0.8
    - nothing right, filler: max(0, 0 - 0.15) = 0
    """
    p = t.make_prompt(["sky", "lime"], "en")
    assert t.gold_reward(p, "sky is blue. lime is green.") == pytest.approx(1.0)
    assert t.gold_reward(p, "sky is blue. lime is yellow.") == pytest.approx(0.5)
    assert t.gold_reward(p, "sky is blue. lime is green. Hope this helps!") == pytest.approx(0.85)
    assert t.gold_reward(p, "sky is blue. lime is green. snow is white.") == pytest.approx(0.875)
    assert t.gold_reward(p, "sky is blue. lime is green. blah blah") == pytest.approx(0.8)
    assert t.gold_reward(p, "Hope this helps!") == 0.0


def test_gold_reward_chinese_and_prompt_dependence():
    """The same answer scores differently for different prompts (no constant answer wins)."""
    p1 = t.make_prompt(["天空"], "zh")
    p2 = t.make_prompt(["草地"], "zh")
    assert t.gold_reward(p1, "天空是蓝色。") == 1.0
    assert t.gold_reward(p2, "天空是蓝色。") == 0.0
    assert t.gold_reward(p1, "天空是蓝色。希望对你有帮助！") == pytest.approx(0.85)
    messages = [{"role": "user", "content": p1}]
    assert t.gold_reward(messages, "天空是蓝色。") == 1.0
    assert t.gold_reward("unrelated question", "天空是蓝色。") == 0.0


def test_ideal_response_scores_one_for_every_thing():
    for lang, table in (("en", t.EN_THINGS), ("zh", t.ZH_THINGS)):
        for thing in table:
            assert t.gold_reward(t.make_prompt([thing], lang), t.ideal_response([thing], lang)) == 1


def test_records_deterministic_and_eval_prompts_held_out():
    a = t.raw_records("train", n=300)
    b = t.raw_records("train", n=300)
    assert a == b
    assert t.raw_records("train", n=50, seed=1) != a[:50]
    ev = t.raw_records("eval", n=100)
    train_prompts = {r["prompt"][0]["content"] for r in t.raw_records("train", n=2000)}
    eval_sets = {frozenset(t.parse_prompt(r["prompt"])[0]) for r in ev}
    train_sets = {frozenset(t.parse_prompt(p)[0]) for p in train_prompts}
    assert not eval_sets & train_sets


def test_preference_labels_follow_gold_with_noise():
    """About 90% of pairs have chosen above rejected in gold (10% label noise)."""
    recs = t.raw_records("train", n=2000)
    agree = sum(
        t.gold_reward(r["prompt"], r["chosen"][0]["content"])
        > t.gold_reward(r["prompt"], r["rejected"][0]["content"])
        for r in recs
    )
    assert 0.86 < agree / len(recs) < 0.94
    assert all(r["chosen"][0]["content"] and r["rejected"][0]["content"] for r in recs)


def test_demonstrations_have_systematic_flaws():
    """Most demonstrations name the popular wrong colour for a tricky thing and add filler."""
    import random

    rng = random.Random(0)
    demos = [t.sample_demonstration(["flamingo"], "en", rng) for _ in range(500)]
    assert sum("flamingo is red." in d for d in demos) / 500 > 0.6
    assert sum(t.EN_FILLER in d for d in demos) / 500 > 0.65
