"""Rejection-sampling fine-tuning: best/worst selection, the written JSONL read back by the data
layer, reward-function resolution, and one round that raises the gold reward."""

from __future__ import annotations

import json

import pytest
import torch

from simple_rlhf.config import ConfigError, DataArgs, load_config
from simple_rlhf.data.pipeline import load_encoded
from simple_rlhf.data.records import to_prompt
from simple_rlhf.data.sources import DataSpec, load_records
from simple_rlhf.data.tiny_task import raw_records
from simple_rlhf.data.tokenize import Limits, encode_prompts
from simple_rlhf.models.loading import load_causal_lm, load_tokenizer
from simple_rlhf.rollout.generate import SamplingArgs
from simple_rlhf.rollout.rewards import CombinedReward
from simple_rlhf.trainers.best_of_n import select_best_worst, write_jsonl
from simple_rlhf.trainers.rejection_sampling import (
    RejectionSamplingArgs,
    RejectionSamplingConfig,
    prompt_chunks,
    reward_source,
    round_prompts,
    run,
    sample_and_select,
    sample_chunks,
)


def test_select_best_worst_by_hand() -> None:
    """Row 0: scores 0.1 0.9 0.9 0.3, all valid -> best 1 (first of the tied 0.9s), worst 0.
    Row 1: 0.5 0.2 0.8 0.1 with sample 2 invalid -> best 0 (0.8 is not eligible), worst 3.
    Row 2: nothing valid -> has_valid False."""
    scores = torch.tensor([[0.1, 0.9, 0.9, 0.3], [0.5, 0.2, 0.8, 0.1], [1.0, 2.0, 3.0, 4.0]])
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)
    best, worst, has_valid = select_best_worst(scores, valid)
    assert best[:2].tolist() == [1, 0]
    assert worst[:2].tolist() == [0, 3]
    assert has_valid.tolist() == [True, True, False]


def test_round_prompts_take_the_next_ones_cycling() -> None:
    """10 prompts, 4 per round: round 0 -> 0..3, round 1 -> 4..7, round 2 -> 8, 9, 0, 1."""
    items = list(range(10))
    assert round_prompts(items, 0, 4) == [0, 1, 2, 3]
    assert round_prompts(items, 1, 4) == [4, 5, 6, 7]
    assert round_prompts(items, 2, 4) == [8, 9, 0, 1]
    assert round_prompts(items, 5, None) == items


def test_reward_source_defaults_and_checks(tmp_path) -> None:
    """No RM and no function: tiny_gold on the tiny task, an error elsewhere; a file function is
    weighted (2 x length of "abc" = 6); a weight count that does not match the sources fails, and
    so does LoRA without merging (each round's model is loaded again)."""
    p = [[{"role": "user", "content": "What color is each of these: sky?"}]]
    cfg = load_config(RejectionSamplingConfig)
    fn, name = reward_source(cfg)
    assert name == "1 x tiny_gold" and fn(p, ["sky is blue."]) == [1.0]
    with pytest.raises(ConfigError, match="no reward"):
        reward_source(load_config(RejectionSamplingConfig, overrides={"data_path": ["x.jsonl"]}))
    f = tmp_path / "my_reward.py"
    f.write_text("def length(prompts, responses, **kw):\n    return [len(r) for r in responses]\n")
    cfg = load_config(
        RejectionSamplingConfig, overrides={"reward_funcs": [f"{f}:length"], "reward_weights": [2]}
    )
    assert reward_source(cfg)[0](p, ["abc"]) == [6.0]
    with pytest.raises(ConfigError, match="2 weights for 1 reward sources"):
        load_config(
            RejectionSamplingConfig,
            overrides={"reward_funcs": ["tiny_gold"], "reward_weights": [1, 2]},
        )
    with pytest.raises(ConfigError, match="needs merge_lora"):
        load_config(RejectionSamplingConfig, overrides={"lora_dim": 4, "merge_lora": False})


def test_best_of_n_selection_and_jsonl_read_back(tmp_path, tiny_sft) -> None:
    """6 prompts x 4 sampled responses of the tiny SFT model, scored by a recording reward
    (number of characters): each kept response is the longest EOS-ended sample of its prompt, the
    worst the shortest; data.jsonl is read back by the data layer as SFT records (same prompt and
    response) and tokenized; pairs.jsonl as preference pairs."""
    tok = load_tokenizer(str(tiny_sft))
    policy = load_causal_lm(str(tiny_sft), tok)
    recs = [to_prompt(r) for r in raw_records("train", n=6, seed=5)]
    prompts, _ = encode_prompts(tok, recs, Limits(256, 192))
    seen: dict[str, list] = {}

    def length_reward(ps, rs, **fields):
        seen.update(prompts=ps, responses=rs, fields=fields)
        return [float(len(r)) for r in rs]

    rs = RejectionSamplingArgs(num_samples=4, keep_worst=True)
    sampling = SamplingArgs(temperature=1.0, max_new_tokens=48)
    reward = CombinedReward([("length", length_reward)])  # the shared interface, as run() builds
    sft_rows, pair_rows, metrics = sample_and_select(
        policy, tok, prompts, reward, sampling, rs, seed=3
    )
    assert len(seen["responses"]) == 24 and set(seen["fields"]) == {"chosen", "rejected"}
    assert len(sft_rows) == 6
    for i, row in enumerate(sft_rows):
        texts = seen["responses"][4 * i : 4 * i + 4]
        assert row["messages"][:-1] == prompts[i]["prompt"]
        assert row["messages"][-1]["content"] == max(texts, key=len)
        assert row["score"] == float(max(len(t) for t in texts))
    for pair in pair_rows:
        assert len(pair["chosen"][0]["content"]) > len(pair["rejected"][0]["content"])
    assert metrics["rs/best_of_n_score"] >= metrics["rs/score_mean"]
    mean_len = sum(len(t) for t in seen["responses"]) / 24  # one source of weight 1: same mean
    assert metrics["reward/length_mean"] == pytest.approx(mean_len, rel=1e-6)
    assert metrics["rs/score_mean"] == pytest.approx(mean_len, rel=1e-6)

    write_jsonl(tmp_path / "data.jsonl", sft_rows)
    write_jsonl(tmp_path / "pairs.jsonl", pair_rows)
    back, _ = load_records(
        DataSpec(paths=(str(tmp_path / "data.jsonl"),), eval_fraction=0.0), "sft", 1
    )
    assert sorted((json.dumps(r.prompt), r.response[0]["content"]) for r in back) == sorted(
        (json.dumps(row["messages"][:-1]), row["messages"][-1]["content"]) for row in sft_rows
    )
    data = DataArgs(data_path=[str(tmp_path / "data.jsonl")], eval_fraction=0.0)
    encoded, stats = load_encoded(tok, data, "sft", 1, "train")
    assert stats.kept == 6 and all(e["input_ids"][-1] == tok.eos_token_id for e in encoded)
    if pair_rows:
        pairs, _ = load_records(
            DataSpec(paths=(str(tmp_path / "pairs.jsonl"),), eval_fraction=0.0), "pair", None
        )
        assert len(pairs) == len(pair_rows)


def test_chunks_are_sampled_independently_of_how_they_are_split(tiny_sft) -> None:
    """5 prompts x 4 samples with generation batch 8: chunks of 8 // 4 = 2 prompts, [0, 1],
    [2, 3], [4]. Sampling chunks 0-2 in one call or chunk 0 and chunks 1-2 apart (as 2 ranks do)
    gives the same responses and scores (each chunk has its own seed)."""
    assert prompt_chunks(5, 4, 8) == [range(0, 2), range(2, 4), range(4, 5)]
    assert prompt_chunks(3, 16, 8) == [range(0, 1), range(1, 2), range(2, 3)]
    tok = load_tokenizer(str(tiny_sft))
    policy = load_causal_lm(str(tiny_sft), tok)
    recs = [to_prompt(r) for r in raw_records("train", n=5, seed=5)]
    prompts, _ = encode_prompts(tok, recs, Limits(256, 192))
    sampling = SamplingArgs(temperature=1.0, max_new_tokens=16, generation_batch_size=8)
    reward = CombinedReward([("length", lambda ps, rs, **_: [float(len(r)) for r in rs])])
    chunks = prompt_chunks(5, 4, 8)
    whole = sample_chunks(policy, tok, prompts, chunks, reward, sampling, 4, seed=3)
    split = sample_chunks(policy, tok, prompts, chunks[:1], reward, sampling, 4, seed=3)
    split += sample_chunks(policy, tok, prompts, chunks[1:], reward, sampling, 4, seed=3)
    assert len(whole) == 5 and whole == split
    assert len({t for s in whole for t in s["texts"]}) > 5  # really sampled


@pytest.mark.slow
@pytest.mark.learning
def test_one_round_with_gold_raises_gold(tmp_path, tiny_sft, learning) -> None:
    """The tiny SFT model, 128 prompts x 8 samples scored by the gold reward, best kept, 2 SFT
    epochs at the default lr 3e-4: the greedy gold on 64 held-out prompts rises by at least 0.05
    (5 seeds, benchmarks/learning_tests_results.md: 0.17-0.24); best-of-8 beats the sample
    mean."""
    cfg = load_config(
        RejectionSamplingConfig,
        overrides={
            "model_name_or_path": str(tiny_sft),
            "output_dir": str(tmp_path),
            "report_to": ["jsonl"],
            "progress_bar": False,
            "num_samples": 8,
            "max_prompts": 128,
            "max_new_tokens": 32,
            "rounds": 1,
            "reward_funcs": ["tiny_gold"],
            "seed": learning.seed,
        },
    )
    out = run(cfg)
    (r1,) = out["rounds"]
    g0, g1 = r1["gold_before"]["eval/gold_greedy"], r1["gold_after"]["eval/gold_greedy"]
    learning.at_least("rejection_sampling", "gold_greedy gain", g1 - g0, 0.05)
    assert r1["rs/best_of_n_score"] > r1["rs/score_mean"]
    rows = (tmp_path / "round_1" / "data.jsonl").read_text().splitlines()
    assert len(rows) == r1["rs/kept"] > 0
    assert (tmp_path / "model.safetensors").is_file()
