"""Critic-free trainers (GRPO / RLOO / REINFORCE++): validation, dynamic-sampling filtering, the
truncation mask, gradient-accumulation invariance of one update, and short runs (one learning).
(Advantage estimators and aggregations are tested by hand in tests/losses.)"""

from __future__ import annotations

import copy

import pytest
import torch

from simple_rlhf.config import ConfigError, load_config
from simple_rlhf.infra.logging import read_jsonl
from simple_rlhf.models.loading import load_causal_lm, load_tokenizer
from simple_rlhf.rollout import experience as xp
from simple_rlhf.rollout.generate import Rollout
from simple_rlhf.trainers.grpo import (
    CriticFreeArgs,
    GRPOConfig,
    ReinforceConfig,
    RLOOConfig,
    filter_groups,
    loss_mask,
    minibatch_step,
    run,
    zero_loss_diagnostic,
)

QUIET = {"report_to": ["none"], "progress_bar": False, "sample_every": 0}


def load(cls, **overrides):
    return load_config(cls, overrides={"reward_funcs": ["tiny_gold"], **overrides})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"reward_funcs": ["none"]}, "no reward"),
        ({"advantage_estimator": "ppo"}, "advantage_estimator"),
        ({"num_generations": 1}, "K >= 2"),
        ({"loss_aggregation": "sum"}, "loss_aggregation"),
        ({"kl_mode": "both"}, "kl_mode"),
        ({"kl_estimator": "k9"}, "kl_estimator"),
        ({"reward_weights": [1.0, 2.0]}, "2 weights for 1 reward sources"),
        ({"prompts_per_rollout": 3, "num_generations": 2}, "multiple of the minibatch"),
        ({"max_new_tokens": 100}, "exceeds max_seq_len"),
        ({"num_iterations": 0}, "num_iterations"),
    ],
)
def test_invalid_configs_are_explained(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load(GRPOConfig, **overrides)


def test_reward_funcs_empty_flag_and_none_alias():
    """With an RM, `--reward-funcs` given no value ([]) and the alias 'none' both mean "no
    function": one source (the RM), so one weight is accepted and two are refused. On the command
    line the bare flag parses to []."""
    import argparse

    from simple_rlhf.config import add_config_arguments, config_from_args
    from simple_rlhf.trainers.grpo import reward_funcs

    for funcs in ([], ["none"], ["None"]):
        cfg = load(GRPOConfig, reward_funcs=funcs, reward_model="rm-dir", reward_weights=[2.0])
        assert reward_funcs(cfg) == []
    with pytest.raises(ConfigError, match="2 weights for 1 reward sources"):
        load(GRPOConfig, reward_funcs=[], reward_model="rm-dir", reward_weights=[1.0, 2.0])
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, GRPOConfig)
    args = parser.parse_args(["--reward-model", "rm-dir", "--reward-funcs"])
    assert config_from_args(GRPOConfig, args).reward.reward_funcs == []


def test_qlora_needs_lora():
    """load_in_4bit without LoRA adapters (nothing could train) is refused at config time."""
    with pytest.raises(ConfigError, match="load_in_4bit"):
        load(GRPOConfig, load_in_4bit=True)
    assert load(GRPOConfig, load_in_4bit=True, lora_dim=4).lora.load_in_4bit


def test_stage_defaults():
    """One loop, three configs differing in defaults; REINFORCE++ allows K = 1 (batch baseline)."""
    g, r = load(GRPOConfig), load(RLOOConfig)
    e = load(ReinforceConfig, num_generations=1, per_device_train_batch_size=8)
    assert (g.rl.advantage_estimator, g.rl.kl_mode, g.rl.loss_aggregation) == (
        "grpo",
        "loss",
        "seq_mean_token_mean",
    )
    assert (r.rl.advantage_estimator, r.rl.kl_mode) == ("rloo", "reward")
    assert (e.rl.advantage_estimator, e.batch.num_generations) == ("reinforce_pp", 1)
    assert type(e).__name__ == "ReinforceConfig" and g.log.output_dir == "outputs/grpo"


def test_filter_groups_drops_equal_reward_groups():
    """K = 4, groups [1,1,0,1] [.5,.5,.5,.5] [0,0,0,0] [0,1,1,1]: groups 1 and 2 are constant ->
    dropped (2), rows 0-3 and 12-15 kept."""
    scores = torch.tensor([1, 1, 0, 1, 0.5, 0.5, 0.5, 0.5, 0, 0, 0, 0, 0, 1, 1, 1.0])
    rows, dropped = filter_groups(scores, 4)
    assert rows == [0, 1, 2, 3, 12, 13, 14, 15]
    assert dropped == 2
    assert filter_groups(torch.ones(4), 2) == ([], 2)


def random_rollout(vocab: int) -> Rollout:
    """8 rows, prompts of 2-5 tokens (left-padded), responses of 1-6 tokens (right-padded); rows
    with 6 tokens have no EOS (truncated): rows 0 and 5."""
    g = torch.Generator().manual_seed(0)
    p_len = torch.tensor([5, 2, 3, 4, 5, 2, 3, 4])
    r_len = torch.tensor([6, 1, 3, 2, 5, 6, 1, 4])
    prompt_mask = (torch.arange(5)[None] >= 5 - p_len[:, None]).long()
    response_mask = (torch.arange(6)[None] < r_len[:, None]).long()
    prompt_ids = torch.randint(10, vocab, (8, 5), generator=g) * prompt_mask
    response_ids = torch.randint(10, vocab, (8, 6), generator=g) * response_mask
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, r_len < 6)


@pytest.fixture(scope="module")
def tok(tiny_base):
    return load_tokenizer(str(tiny_base))


def test_loss_mask_removes_truncated_rows(tiny_base, tok):
    """Rows 0 and 5 (6 tokens, no EOS) leave the loss: 28 real tokens - 12 = 16."""
    r = random_rollout(len(tok))
    z = torch.zeros(8, 6)
    exp = xp.Experience(r, z, z, torch.zeros(8), z, z, z)
    assert int(loss_mask(exp, False).sum()) == 28
    m = loss_mask(exp, True)
    assert int(m.sum()) == 16 and int(m[0].sum()) == 0 and int(m[5].sum()) == 0


@pytest.mark.parametrize("agg", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"])
def test_batch8_accum1_equals_batch2_accum4(tiny_base, tok, agg):
    """One optimiser step over 8 responses as 1 micro-batch of 8 or 4 of 2: identical parameters
    (SGD lr 1, clip at norm 1), with KL (k3) in the loss and truncated rows masked. At ratio 1 the
    surrogate is -aggregate(A): e.g. token_mean = -sum(A over 16 kept tokens) / 16."""
    torch.manual_seed(0)
    actor = load_causal_lm(str(tiny_base), tok, dropout=0.0)
    r = random_rollout(len(tok))
    old_lp, _ = xp.compute_logprobs(actor, r, temperature=0.7)
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(8, generator=g)
    exp, _ = xp.make_experience(
        r,
        old_lp,
        old_lp + 0.1 * torch.randn(old_lp.shape, generator=g),
        scores,
        advantage_estimator="grpo",
        group_size=4,
        kl_in_reward=False,
        whiten_advantages=False,
    )
    rl = CriticFreeArgs(loss_aggregation=agg, kl_mode="loss", kl_coef=0.1, mask_truncated=True)
    finals = []
    for micro in (8, 2):
        a = copy.deepcopy(actor)
        opt = torch.optim.SGD(a.parameters(), lr=1.0)
        m = minibatch_step(
            a, opt, exp, micro, rl, temperature=0.7, agg_constant=6.0, max_grad_norm=1.0
        )
        finals.append((a, m))
    (a8, m8), (a2, m2) = finals
    for p, q in zip(a8.parameters(), a2.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)
    pairs = zip(a8.parameters(), actor.parameters(), strict=True)
    assert max((p - q).abs().max() for p, q in pairs) > 1e-3  # the step did something
    assert m8["policy/loss"] == pytest.approx(m2["policy/loss"], abs=1e-5)
    mask = loss_mask(exp, True).float()
    adv = exp.advantages
    if agg == "token_mean":
        want = -(adv * mask).sum() / mask.sum()
    elif agg == "seq_mean_token_mean":
        rows = mask.sum(-1) > 0
        want = -((adv * mask).sum(-1)[rows] / mask.sum(-1)[rows]).mean()
    else:
        want = -(adv * mask).sum() / (8 * 6.0)
    assert m8["policy/loss"] == pytest.approx(float(want), rel=1e-5, abs=1e-6)


def test_zero_loss_diagnostic_mentions_the_cause():
    line = zero_loss_diagnostic(
        {"policy/loss": 1e-9, "policy/grad_norm": 0.5, "rollout/zero_adv_group_frac": 0.25}
    )
    assert "-mean(A)" in line and "0.500" in line and "25%" in line


# --- end to end ------------------------------------------------------------------------------


def short(tiny_sft, tmp_path, **overrides):
    return {
        "model_name_or_path": str(tiny_sft),
        "output_dir": str(tmp_path),
        "gold_eval_prompts": 0,
        "prompts_per_rollout": 4,
        "num_generations": 4,
        "per_device_train_batch_size": 8,
        "max_new_tokens": 24,
        "num_rollouts": 2,
        **QUIET,
        "report_to": ["jsonl"],
        **overrides,
    }


@pytest.mark.slow
def test_rloo_and_reinforce_short_runs_log_diagnostics(tiny_sft, tmp_path):
    """2 rollouts each: RLOO (KL in reward, 2 passes, dynamic sampling, truncation mask) and
    REINFORCE++ with K = 1 (no reference: KL off); the per-function mean equals the raw score
    mean (one function, weight 1) and the dropped-group count is logged."""
    over = {"num_iterations": 2, "dynamic_sampling": True, "mask_truncated": True}
    s = run(load(RLOOConfig, **short(tiny_sft, tmp_path / "rloo", **over)))
    rows = read_jsonl(tmp_path / "rloo" / "metrics.jsonl")
    assert s["rollouts"] == 2 and len(rows) == 2
    for key in ("rollout/zero_adv_group_frac", "rollout/groups_dropped", "objective/kl"):
        assert key in rows[0], key
    assert rows[0]["objective/kl"] == 0.0  # policy == reference at the first rollout
    assert rows[0]["reward/tiny_gold_mean"] == pytest.approx(rows[0]["reward/raw_score_mean"])
    assert rows[0]["rollout/groups_dropped"] == 4 * rows[0]["rollout/zero_adv_group_frac"]
    # rollout speed: the 16 responses' tokens over the generate(-and-decode) time
    tokens = 16 * rows[0]["rollout/response_len"]
    speed = rows[0]["perf/generate_tokens_per_s"]
    assert speed == pytest.approx(tokens / rows[0]["time/generate_s"], rel=0.02)
    over = {"num_generations": 1, "kl_mode": "none", "per_device_train_batch_size": 4}
    s = run(load(ReinforceConfig, **short(tiny_sft, tmp_path / "rpp", **over)))
    assert s["rollouts"] == 2
    assert "policy/kl_loss" not in read_jsonl(tmp_path / "rpp" / "metrics.jsonl")[0]


@pytest.mark.slow
@pytest.mark.learning
def test_short_grpo_run_raises_gold(tiny_sft, tmp_path, learning):
    """Tiny SFT policy, gold reward, 8 rollouts of 8 prompts x 4 responses in 2 minibatches of 16
    (k3 KL in the loss, beta 0.04): held-out greedy gold (64 prompts) rises by at least 0.06
    (5 seeds, benchmarks/learning_tests_results.md: 0.12-0.24). The first rollout's KL is 0 and
    the logged per-function mean is the score mean."""
    over = {"num_rollouts": 8, "prompts_per_rollout": 8, "per_device_train_batch_size": 16}
    over.update(gold_eval_prompts=64, seed=learning.seed, learning_rate=2e-4)  # as measured
    summary = run(load(GRPOConfig, **short(tiny_sft, tmp_path, **over)))
    before, after = summary["before"]["eval/gold_greedy"], summary["after"]["eval/gold_greedy"]
    learning.at_least("grpo", "gold_greedy gain", after - before, 0.06)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows[1]["objective/kl"] == 0.0  # row 0 is the eval before training
    assert rows[1]["reward/tiny_gold_mean"] == pytest.approx(rows[1]["reward/raw_score_mean"])
    assert 0.0 <= rows[1]["rollout/zero_adv_group_frac"] <= 1.0


def test_max_steps_caps_the_rollouts():
    """``--max-steps`` (counted in rollouts) caps ``num_rollouts``, its default 250 included."""
    from simple_rlhf.trainers.grpo import num_rollouts

    assert num_rollouts(load(GRPOConfig), 100) == 250
    assert num_rollouts(load(GRPOConfig, max_steps=1), 100) == 1
    assert num_rollouts(load(GRPOConfig, max_steps=50, num_rollouts=4), 100) == 4
    assert num_rollouts(load(GRPOConfig, num_rollouts=None, max_steps=7), 100) == 7


def test_old_logprob_forward_is_needed_only_when_the_policy_can_have_moved():
    from simple_rlhf.trainers.online import old_logprobs_needed

    assert not old_logprobs_needed(1, 32, 32, use_reference=False)  # one step uses the rollout
    assert old_logprobs_needed(2, 32, 32, use_reference=False)  # a second pass: policy moved
    assert old_logprobs_needed(1, 64, 32, use_reference=False)  # a second minibatch: moved
    assert old_logprobs_needed(1, 32, 32, use_reference=True)  # the KL needs the old values


@pytest.mark.slow
def test_skipping_the_old_logprob_forward_changes_nothing(tiny_sft, tmp_path, monkeypatch):
    """One rollout of 16 consumed by one optimiser step with the KL off: the run skips the no-grad
    "old" forward (ratio = exp(lp - lp.detach())). Forcing that forward gives the same weights
    (atol 1e-6), loss and gradient norm, and the same entropy (reported from the training forward
    when skipped)."""
    from safetensors.torch import load_file

    from simple_rlhf.trainers import online

    over = {"num_rollouts": 1, "per_device_train_batch_size": 16, "kl_mode": "none"}
    run(load(GRPOConfig, **short(tiny_sft, tmp_path / "skip", **over)))
    monkeypatch.setattr(online, "old_logprobs_needed", lambda *a, **k: True)
    run(load(GRPOConfig, **short(tiny_sft, tmp_path / "full", **over)))
    skip, full = (read_jsonl(tmp_path / d / "metrics.jsonl")[0] for d in ("skip", "full"))
    assert skip["train/optimizer_steps"] == full["train/optimizer_steps"] == 1
    assert skip["policy/grad_norm"] > 0.01
    for key in ("policy/loss", "policy/grad_norm", "policy/entropy", "reward/score_mean"):
        assert skip[key] == pytest.approx(full[key], rel=1e-4, abs=1e-6), key
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("skip", "full"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
