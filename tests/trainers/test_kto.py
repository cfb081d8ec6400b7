"""KTO trainer: mismatched pairs for the KL reference point, config checks, a short learning run."""

from __future__ import annotations

import math

import pytest

from simple_rlhf.config import ConfigError, load_config
from simple_rlhf.data.tokenize import IGNORE_INDEX
from simple_rlhf.trainers.kto import KTOConfig, collate_unpaired, mismatch_partner, run

QUIET = {"report_to": ["none"], "progress_bar": False, "gold_eval_prompts": 0}


def test_mismatched_batch_shifts_completions_by_one():
    """B = 3 (odd: the last three rotate, i.e. prompt i gets completion i-1 mod 3); labels mask
    the prompt; pad id 0.
    Examples: ([1,2],[3]) good, ([4],[5,6]) bad, ([7],[8]) good ->
    matched rows 1 2 3 | 4 5 6 | 7 8; mismatched rows 1 2 8 | 4 3 | 7 5 6."""
    chunk = [
        {"prompt_ids": [1, 2], "completion_ids": [3], "label": True},
        {"prompt_ids": [4], "completion_ids": [5, 6], "label": False},
        {"prompt_ids": [7], "completion_ids": [8], "label": True},
    ]
    matched, shifted, labels = collate_unpaired(chunk, pad_id=0, max_len=16)
    assert matched["input_ids"].tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 0]]
    assert shifted["input_ids"].tolist() == [[1, 2, 8], [4, 3, 0], [7, 5, 6]]
    x = IGNORE_INDEX
    assert shifted["labels"].tolist() == [[x, x, 8], [x, 3, x], [x, 5, 6]]
    assert shifted["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0], [1, 1, 1]]
    assert labels.tolist() == [True, False, True]
    # completions are cut so prompt + completion fits max_len, keeping at least one token
    _, cut, _ = collate_unpaired(chunk, pad_id=0, max_len=2)
    assert cut["input_ids"].tolist() == [[1, 2, 8], [4, 3, 0], [7, 5, 0]]


def test_mismatch_partners_swap_pairs_and_survive_even_slicing():
    """n = 4: 0<->1, 2<->3; n = 5: 0<->1, then 2 <- 4, 3 <- 2, 4 <- 3; n = 1: itself. Each
    partner differs from i (n > 1) and the map is a permutation; 8 examples split into slices of
    4 (two ranks) or 2 get the same partners as the whole batch (offset by the slice start)."""
    assert [mismatch_partner(i, 4) for i in range(4)] == [1, 0, 3, 2]
    assert [mismatch_partner(i, 5) for i in range(5)] == [1, 0, 4, 2, 3]
    assert mismatch_partner(0, 1) == 0
    for n in range(2, 10):
        partners = [mismatch_partner(i, n) for i in range(n)]
        assert sorted(partners) == list(range(n)) and all(p != i for i, p in enumerate(partners))
    whole = [mismatch_partner(i, 8) for i in range(8)]
    for size in (2, 4):
        sliced = [s + mismatch_partner(i, size) for s in range(0, 8, size) for i in range(size)]
        assert sliced == whole


def test_config_errors():
    with pytest.raises(ConfigError, match="per_device_train_batch_size"):
        load_config(KTOConfig, overrides={"per_device_train_batch_size": 1})
    with pytest.raises(ConfigError, match="beta"):
        load_config(KTOConfig, overrides={"beta": 0.0})
    with pytest.raises(ConfigError, match="undesirable_weight"):
        load_config(KTOConfig, overrides={"undesirable_weight": -1.0})


def test_tiny_recipe_loads():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs" / "tiny"
    cfg = load_config(KTOConfig, root / "kto.yaml")
    assert cfg.log.output_dir == "outputs/kto" and cfg.train.data_step == 2


@pytest.mark.learning
def test_short_run_moves_held_out_preferences(tmp_path, tiny_sft, learning):
    """60 steps of 8 unpaired examples at lr 5e-4 from the tiny SFT model: the implicit reward
    ``β(log π - log π_ref)`` comes to rank held-out chosen answers first (pair margin and accuracy
    both 0 before training, when policy == reference; after, over 5 seeds on 128 pairs: margin
    0.061-0.130, accuracy 0.59-0.70), and desirable examples outscore undesirable ones on held-out
    unpaired data (margin 0.13-0.30; with session 7's fused AdamW step 0.079-0.420, so the bound
    is 0.04, about half the smallest; benchmarks/learning_tests_results.md)."""
    overrides = {
        **QUIET,
        "model_name_or_path": str(tiny_sft),
        "output_dir": str(tmp_path / "kto"),
        "learning_rate": 5e-4,
        "desirable_weight": 4.5,
        "max_steps": 60,
        "per_device_train_batch_size": 8,
        "max_eval_samples": 128,
        "seed": learning.seed,
    }
    summary = run(load_config(KTOConfig, overrides=overrides))
    before, after = summary["before"], summary["after"]
    assert before["eval/pairs/margin"] == 0.0 and before["eval/rewards/accuracy"] == 0.0
    for key, bound in (
        ("eval/pairs/margin", 0.03),
        ("eval/rewards/accuracy", 0.55),
        ("eval/rewards/margin", 0.04),
    ):
        learning.at_least("kto", key, after[key], bound)
    assert math.isfinite(after["eval/kl"]) and after["eval/kl"] >= 0.0
