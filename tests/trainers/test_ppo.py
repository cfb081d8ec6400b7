"""PPO trainer: batch semantics and validation, gradient accumulation invariance of one update,
the reference/LoRA/EMA/resume mechanics, and a short run that raises the held-out gold reward.
(Loss math is tested in tests/losses; experience assembly in tests/rollout.)"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from simple_rlhf.config import ConfigError, load_config
from simple_rlhf.infra.logging import read_jsonl
from simple_rlhf.models.loading import load_causal_lm, load_tokenizer
from simple_rlhf.models.reward import load_reward_model
from simple_rlhf.rollout import experience as xp
from simple_rlhf.rollout.generate import Rollout
from simple_rlhf.trainers.ppo import (
    Learner,
    PPOConfig,
    PPOLossArgs,
    actor_minibatch_step,
    batch_plan,
    critic_minibatch_step,
    run,
)

QUIET = {"report_to": ["none"], "progress_bar": False, "sample_every": 0}


def cfg_of(**overrides):
    return load_config(PPOConfig, overrides={"reward_funcs": ["tiny_gold"], **overrides})


def test_batch_plan_arithmetic():
    """16 prompts x 2 responses = 32 per rollout; minibatch 4 x 2 = 8 -> 4 minibatches; 3 epochs ->
    12 optimiser steps per rollout; 5 rollouts -> 60 steps. Without num_rollouts: 2 epochs over
    100 prompts -> ceil(200 / 16) = 13 rollouts; with max_steps 30 -> ceil(30 / 12) = 3."""
    over = dict(
        prompts_per_rollout=16,
        responses_per_prompt=2,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        ppo_epochs=3,
    )
    plan = batch_plan(cfg_of(num_rollouts=5, **over), n_prompts=100)
    assert (plan.rollout_batch, plan.minibatch, plan.steps_per_rollout) == (32, 8, 12)
    assert (plan.num_rollouts, plan.total_steps) == (5, 60)
    assert "16 prompts x 2 responses = 32 responses" in plan.describe()
    assert batch_plan(cfg_of(num_rollouts=None, num_train_epochs=2, **over), 100).num_rollouts == 13
    assert batch_plan(cfg_of(num_rollouts=None, max_steps=30, **over), 100).num_rollouts == 3
    # an explicit max_steps caps num_rollouts (the default 60 included)
    assert batch_plan(cfg_of(max_steps=30, **over), 100).num_rollouts == 3
    assert batch_plan(cfg_of(num_rollouts=2, max_steps=30, **over), 100).num_rollouts == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"reward_funcs": []}, "no reward"),
        ({"reward_funcs": ["none"]}, "no reward"),
        ({"load_in_4bit": True}, "load_in_4bit"),
        ({"prompts_per_rollout": 6, "per_device_train_batch_size": 4}, "multiple of the minibatch"),
        ({"reward_weights": [1.0, 2.0]}, "2 weights for 1 reward sources"),
        ({"kl_estimator": "k9"}, "kl_estimator"),
        ({"loss_aggregation": "sum"}, "loss_aggregation"),
        ({"dual_clip": 0.5}, "dual_clip"),
        ({"max_new_tokens": 100}, "exceeds max_seq_len"),
        ({"ppo_epochs": 0}, "ppo_epochs"),
        ({"critic_lr_scheduler_type": "step"}, "critic_lr_scheduler_type"),
    ],
)
def test_invalid_configs_are_explained(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(PPOConfig, overrides={"reward_funcs": ["tiny_gold"], **overrides})


# --- batch 8 x accumulation 1 == batch 2 x accumulation 4 ---------------------------------------


@pytest.fixture(scope="module")
def tok(tiny_base):
    return load_tokenizer(str(tiny_base))


def random_rollout(vocab: int) -> Rollout:
    """8 rows, prompts of 2-5 tokens (left-padded), responses of 1-6 tokens (right-padded)."""
    g = torch.Generator().manual_seed(0)
    p_len = torch.tensor([5, 2, 3, 4, 5, 2, 3, 4])
    r_len = torch.tensor([6, 1, 3, 2, 5, 6, 1, 4])
    prompt_mask = (torch.arange(5)[None] >= 5 - p_len[:, None]).long()
    response_mask = (torch.arange(6)[None] < r_len[:, None]).long()
    prompt_ids = torch.randint(10, vocab, (8, 5), generator=g) * prompt_mask
    response_ids = torch.randint(10, vocab, (8, 6), generator=g) * response_mask
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, r_len < 6)


def test_batch8_accum1_equals_batch2_accum4(tiny_base, tok):
    """One actor and one critic optimiser step over the same minibatch of 8 responses, as 1
    micro-batch of 8 or 4 accumulated micro-batches of 2: identical parameters afterwards (SGD
    lr 1 so parameter differences are gradient differences; clipping at norm 1 included).
    Every loss term is on: clipped surrogate, entropy bonus, KL in the loss, clipped value loss."""
    torch.manual_seed(0)
    actor = load_causal_lm(str(tiny_base), tok, dropout=0.0)
    critic = load_reward_model(str(tiny_base), tok, dropout=0.0)
    r = random_rollout(len(tok))
    old_lp, _ = xp.compute_logprobs(actor, r, temperature=0.7)
    values = xp.compute_values(critic, r)
    g = torch.Generator().manual_seed(1)
    ref_lp = old_lp + 0.1 * torch.randn(old_lp.shape, generator=g)
    exp, _ = xp.make_experience(
        r,
        old_lp + 0.05 * torch.randn(old_lp.shape, generator=g),
        ref_lp,
        torch.randn(8, generator=g),
        values=values,
        kl_coef=0.1,
    )
    args = PPOLossArgs(entropy_coef=0.01, kl_in_loss=True, clip_range=0.1, value_clip=0.05)

    finals = []
    for micro in (8, 2):
        a = copy.deepcopy(actor)
        c = copy.deepcopy(critic)
        la = Learner(a, torch.optim.SGD(a.parameters(), lr=1.0), _noop_sched(), 1.0)
        lc = Learner(c, torch.optim.SGD(c.parameters(), lr=1.0), _noop_sched(), 1.0)
        am = actor_minibatch_step(la, exp, micro, args, temperature=0.7, kl_coef=0.1)
        cm = critic_minibatch_step(lc, exp, micro, args)
        finals.append((a, c, am, cm))
    (a8, c8, am8, cm8), (a2, c2, am2, cm2) = finals
    moved = max(
        (p - q).abs().max() for p, q in zip(a8.parameters(), actor.parameters(), strict=True)
    )
    assert moved > 1e-3  # the step did something
    for p, q in zip(a8.parameters(), a2.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)
    for p, q in zip(c8.parameters(), c2.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)
    assert am8["policy/loss"] == pytest.approx(am2["policy/loss"], abs=1e-5)
    assert am8["policy/grad_norm"] == pytest.approx(am2["policy/grad_norm"], rel=1e-4)
    assert cm8["critic/value_loss"] == pytest.approx(cm2["critic/value_loss"], abs=1e-5)


def test_only_the_actor_is_loaded_in_4bit(tiny_base, tok, monkeypatch):
    """QLoRA: ``load_in_4bit`` reaches the actor's ``load_causal_lm`` and nothing else; with LoRA
    the reference is the adapter-disabled actor (None), the critic a full-precision model. (The
    4-bit load itself is stubbed: bitsandbytes has no CPU kernels here.)"""
    import dataclasses

    from simple_rlhf.models import loading, lora
    from simple_rlhf.models.lora import apply_lora
    from simple_rlhf.trainers.ppo import load_models

    seen = []

    def fake_load(name, tokenizer, **kw):
        seen.append(kw.pop("load_in_4bit", False))
        return load_causal_lm(name, tokenizer, **kw)

    def plain_lora(model, args, **kw):
        return apply_lora(model, dataclasses.replace(args, load_in_4bit=False), **kw)

    monkeypatch.setattr(loading, "load_causal_lm", fake_load)
    monkeypatch.setattr(lora, "apply_lora", plain_lora)
    cfg = cfg_of(actor_model_name_or_path=str(tiny_base), lora_dim=4, load_in_4bit=True)
    actor, ref, critic = load_models(cfg, tok)
    assert seen == [True] and ref is None and hasattr(actor, "disable_adapter")
    assert all(p.dtype == torch.float32 for p in critic.parameters())


class _noop_sched:  # noqa: N801 - a stand-in scheduler
    def step(self) -> None:
        pass


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
def test_rm_reward_lora_ema_checkpoint_and_resume(tiny_sft, tiny_rm, tmp_path):
    """The RM (normalised) plus 0.5 x gold as the reward, critic initialised from the RM, a LoRA
    actor (reference = adapter disabled, so the first rollout's KL is exactly 0), EMA saved as
    actor_ema/, critic saved, a checkpoint per rollout, and a resumed run that continues."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    out = tmp_path / "ppo"
    base = {
        "actor_model_name_or_path": str(tiny_sft),
        "reward_model": str(tiny_rm),
        "reward_funcs": ["tiny_gold"],
        "reward_weights": [1.0, 0.5],
        "num_rollouts": 1,
        "prompts_per_rollout": 4,
        "per_device_train_batch_size": 2,
        "max_new_tokens": 16,
        "gold_eval_prompts": 0,
        "lora_dim": 4,
        "ema_decay": 0.9,
        "save_steps": 1,
        "output_dir": str(out),
        "report_to": ["jsonl"],
        "progress_bar": False,
        "sample_every": 0,
    }
    s1 = run(cfg_of(**base))
    rows = read_jsonl(out / "metrics.jsonl")
    assert rows[0]["objective/kl"] == 0.0  # actor == reference at the first rollout
    for key in (
        "policy/clipfrac",
        "policy/approx_kl",
        "critic/value_loss",
        "policy/entropy",
        "critic/explained_variance",
        "time/generate_s",
        "time/score_s",
        "time/train_s",
        "rollout/eos_rate",
        "reward/score_std",
        "advantages/std",
        "reward/rm_mean",
        "reward/tiny_gold_mean",
    ):
        assert key in rows[0], key
    # raw score (before the +-5 clip) = rm + 0.5 * gold, averaged over the batch
    want = rows[0]["reward/rm_mean"] + 0.5 * rows[0]["reward/tiny_gold_mean"]
    assert rows[0]["reward/raw_score_mean"] == pytest.approx(want, rel=1e-5)
    assert s1["rollouts"] == 1
    AutoModelForCausalLM.from_pretrained(out)  # merged LoRA actor loads
    AutoModelForCausalLM.from_pretrained(out / "actor_ema")
    AutoModelForSequenceClassification.from_pretrained(out / "critic")
    assert (out / "checkpoints" / "step-1" / "actor_ema.safetensors").exists()

    s2 = run(cfg_of(**{**base, "num_rollouts": 2}))
    assert s2["rollouts"] == 2
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]


@pytest.mark.slow
@pytest.mark.learning
def test_short_ppo_run_raises_gold(tiny_sft, tmp_path, learning):
    """The tiny SFT fixture as actor, the gold reward as the reward source, 16 rollouts of 32
    prompts (actor lr 2e-4, kl_coef 0.05, critic lr 1e-4). On 64 held-out prompts the greedy gold
    reward rises by at least 0.06 and the sampled one by at least 0.01 (5 seeds,
    benchmarks/learning_tests_results.md: greedy 0.12-0.25, sampled 0.03-0.16), and the first
    rollout's KL to the full-copy reference is 0."""
    out = tmp_path / "ppo"
    summary = run(
        cfg_of(
            actor_model_name_or_path=str(tiny_sft),
            num_rollouts=16,
            prompts_per_rollout=32,
            learning_rate=2e-4,
            kl_coef=0.05,
            critic_learning_rate=1e-4,
            gold_eval_prompts=64,
            max_new_tokens=32,
            output_dir=str(out),
            seed=learning.seed,
            **{**QUIET, "report_to": ["jsonl"]},
        )
    )
    before, after = summary["before"], summary["after"]
    for key, by in (("eval/gold_greedy", 0.06), ("eval/gold_sampled", 0.01)):
        learning.at_least("ppo", f"{key} gain", after[key] - before[key], by)
    assert read_jsonl(out / "metrics.jsonl")[1]["objective/kl"] == 0.0  # row 0 is the eval
    saved = json.loads((out / "summary.json").read_text())
    assert saved["after"]["eval/gold_greedy"] == after["eval/gold_greedy"]


def test_ptx_loss_is_token_mean_nll_of_the_labelled_tokens(tiny_base, tok):
    """Two right-padded SFT rows (prompt labels -100): loss = sum over labelled tokens of
    -log p(token | prefix) / number of labelled tokens (3 + 1 = 4), computed row by row unpadded."""
    from simple_rlhf.data.tokenize import IGNORE_INDEX, collate_sft
    from simple_rlhf.trainers.ppo import ptx_loss

    model = load_causal_lm(str(tiny_base), tok, dropout=0.0).eval()
    rows = [
        {"input_ids": [11, 12, 13, 14, 15], "labels": [IGNORE_INDEX, IGNORE_INDEX, 13, 14, 15]},
        {"input_ids": [21, 22, 23], "labels": [IGNORE_INDEX, IGNORE_INDEX, 23]},
    ]
    with torch.no_grad():
        got = ptx_loss(model, collate_sft(rows, tok.pad_token_id))
        nll = []
        for r in rows:
            logp = torch.log_softmax(model(torch.tensor([r["input_ids"]])).logits[0], -1)
            nll += [-logp[t - 1, r["input_ids"][t]] for t, y in enumerate(r["labels"]) if y >= 0]
    assert len(nll) == 4
    torch.testing.assert_close(got, torch.stack(nll).mean(), rtol=1e-5, atol=1e-6)


def test_cycle_ptx_global_stream_is_sharded_over_ranks_and_resumes():
    """7 SFT rows (row i = tokens [i + 10, i + 10]), seed 3. One process, batch 4: the shuffled
    order cut into 4 + 3. Two ranks, batch 2 each: the same global batches of 4 and 3, rank 0
    taking rows 0-1 and rank 1 rows 2-3 (then 0-1 and 2 of the 3), so rank 0's rows followed by
    rank 1's are the single-process batch; ``start=3`` skips 3 batches of the stream (pass 1's
    two, then pass 2's first). With 5 rows and 2 x 2 per global batch each pass is 4 + 1 rows:
    the chunk of 1 is skipped on both ranks, so every draw gives each rank 2 rows."""
    from simple_rlhf.infra.distributed import Dist
    from simple_rlhf.trainers.ppo_update import cycle_ptx

    def rows_of(batch) -> list[int]:
        return [int(r[0]) for r in batch["input_ids"]]

    ex = [{"input_ids": [i + 10, i + 10], "labels": [-100, i + 10]} for i in range(7)]
    one = cycle_ptx(ex, 4, 0, seed=3)
    ranks = [cycle_ptx(ex, 2, 0, seed=3, dist=Dist(None, rank=r, world_size=2)) for r in (0, 1)]
    single = [rows_of(next(one)) for _ in range(4)]
    assert [len(b) for b in single] == [4, 3, 4, 3]
    for want in single:
        b0, b1 = (rows_of(next(it)) for it in ranks)
        assert (len(b0), len(b1)) == (2, len(want) - 2)
        assert b0 + b1 == want
    resumed = cycle_ptx(ex, 4, 0, seed=3, start=3)
    assert rows_of(next(resumed)) == single[3]
    small = [cycle_ptx(ex[:5], 2, 0, seed=3, dist=Dist(None, rank=r, world_size=2)) for r in (0, 1)]
    for _ in range(4):  # passes 1 and 2: never the 1-row chunk (a rank would get 0 rows)
        b0, b1 = (rows_of(next(it)) for it in small)
        assert len(b0) == len(b1) == 2 and len(set(b0 + b1)) == 4


def test_ptx_nll_sum_over_token_count_is_the_ptx_loss(tiny_base, tok):
    """The rank share ``ptx_nll_sum`` over its token count (3 + 1 = 4 labelled tokens) equals
    ``ptx_loss`` (the token mean) on the same batch."""
    from simple_rlhf.data.tokenize import IGNORE_INDEX, collate_sft
    from simple_rlhf.trainers.ppo import ptx_loss
    from simple_rlhf.trainers.ppo_update import ptx_nll_sum

    model = load_causal_lm(str(tiny_base), tok, dropout=0.0).eval()
    rows = [
        {"input_ids": [11, 12, 13, 14, 15], "labels": [IGNORE_INDEX, IGNORE_INDEX, 13, 14, 15]},
        {"input_ids": [21, 22, 23], "labels": [IGNORE_INDEX, IGNORE_INDEX, 23]},
    ]
    batch = collate_sft(rows, tok.pad_token_id)
    with torch.no_grad():
        total, count = ptx_nll_sum(model, batch)
        torch.testing.assert_close(total / count, ptx_loss(model, batch), rtol=1e-5, atol=1e-6)
    assert count == 4
