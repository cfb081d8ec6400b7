"""Experience from a Rollout: the reward on the last real response token for every padding case,
logprobs/values equal to a direct unpadded computation (temperature applied, value off-by-one),
the LoRA reference, degenerate responses, and the micro-batch weights of gradient accumulation.
(The loss math itself is tested in tests/losses.)"""

from __future__ import annotations

import pytest
import torch

from simple_rlhf.losses.reduce import AGGREGATIONS, aggregate, masked_mean
from simple_rlhf.models.forward import token_values
from simple_rlhf.models.loading import load_causal_lm, load_tokenizer
from simple_rlhf.rollout.experience import (
    Experience,
    compute_logprobs,
    compute_values,
    make_experience,
    micro_batch_weight,
    minibatches,
    reference,
    score_responses,
)
from simple_rlhf.rollout.generate import Rollout, SamplingArgs, generate

PAD = 0


def hand_rollout() -> Rollout:
    """B=4, P=3, R=4. Prompts left-padded by 0/1/2/1; responses:
    row 0 no EOS (4 tokens), row 1 EOS at column 1, row 2 EOS first (empty text), row 3 all-zero
    mask (degenerate)."""
    prompt_mask = torch.tensor([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 1, 1]])
    response_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    prompt_ids = torch.where(prompt_mask.bool(), torch.full((4, 3), 7), torch.full((4, 3), PAD))
    response_ids = torch.where(response_mask.bool(), torch.full((4, 4), 9), torch.full((4, 4), PAD))
    return Rollout(
        prompt_ids,
        prompt_mask,
        response_ids,
        response_mask,
        torch.tensor([False, True, True, True]),
    )


def test_reward_on_last_real_token_every_padding_case():
    """k1 KL = old - ref = 0.5 on every token, kl_coef 0.2 -> -0.1 per real token; scores 1..4:
    row 0 [-0.1, -0.1, -0.1, -0.1 + 1] (no EOS: last column), row 1 [-0.1, -0.1 + 2, 0, 0],
    row 2 [-0.1 + 3, 0, 0, 0] (immediate EOS), row 3 all zero (no real token gets nothing)."""
    r = hand_rollout()
    old = torch.full((4, 4), -1.0)
    ref = torch.full((4, 4), -1.5)
    exp, m = make_experience(
        r,
        old,
        ref,
        torch.tensor([1.0, 2.0, 3.0, 4.0]),
        values=torch.zeros(4, 4),
        kl_coef=0.2,
        whiten_advantages=False,
    )
    want = torch.tensor(
        [[-0.1, -0.1, -0.1, 0.9], [-0.1, 1.9, 0.0, 0.0], [2.9, 0.0, 0.0, 0.0], [0.0] * 4]
    )
    torch.testing.assert_close(exp.token_rewards, want, rtol=1e-6, atol=1e-6)
    # KL 0.5 on real tokens only; per response: [2.0, 1.0, 0.5, 0.0] -> mean 0.875
    torch.testing.assert_close(exp.kl, 0.5 * r.response_mask.float())
    assert m["objective/kl"] == pytest.approx(0.875, rel=1e-6)
    assert m["objective/kl_per_token"] == pytest.approx(0.5, rel=1e-6)
    # GAE with V = 0, gamma = 1, lam = 0.95: row 2 has one step -> A = 2.9; row 1:
    # A_1 = 1.9, A_0 = -0.1 + 0.95 * 1.9 = 1.705
    assert exp.advantages[2].tolist() == pytest.approx([2.9, 0, 0, 0], rel=1e-6)
    assert exp.advantages[1].tolist() == pytest.approx([1.705, 1.9, 0, 0], rel=1e-6)
    assert exp.advantages[3].abs().sum() == 0
    torch.testing.assert_close(exp.returns, exp.advantages)  # V = 0


def test_kl_in_loss_keeps_rewards_score_only():
    """With KL in the loss the token rewards hold only the score at the last real token."""
    r = hand_rollout()
    exp, _ = make_experience(
        r,
        torch.zeros(4, 4),
        torch.ones(4, 4),
        torch.tensor([1.0, 2.0, 3.0, 4.0]),
        values=torch.zeros(4, 4),
        kl_coef=0.2,
        kl_in_reward=False,
    )
    assert exp.token_rewards[0].tolist() == [0, 0, 0, 1.0]
    assert exp.token_rewards[2].tolist() == [3.0, 0, 0, 0]


def test_whitened_advantages_degenerate_batch_is_finite():
    """Whitening over real tokens: mean 0; masked positions exactly 0; no NaN with empty rows."""
    r = hand_rollout()
    exp, m = make_experience(
        r,
        torch.zeros(4, 4),
        torch.zeros(4, 4),
        torch.tensor([1.0, 2.0, 3.0, 4.0]),
        values=torch.randn(4, 4),
    )
    assert torch.isfinite(exp.advantages).all()
    assert masked_mean(exp.advantages, r.response_mask).abs() < 1e-6
    assert (exp.advantages[~r.response_mask.bool()] == 0).all()
    assert m["rollout/empty_rate"] == 0.5 and m["rollout/eos_rate"] == 0.75

    # every response is a lone EOS with the same score: zero advantages, still finite
    lone = Rollout(
        r.prompt_ids,
        r.prompt_mask,
        r.response_ids,
        torch.tensor([[1, 0, 0, 0]] * 4),
        torch.ones(4, dtype=torch.bool),
    )
    exp, _ = make_experience(
        lone, torch.zeros(4, 4), torch.zeros(4, 4), torch.ones(4), values=torch.ones(4, 4)
    )
    assert torch.isfinite(exp.advantages).all() and exp.advantages.abs().max() < 1e-3


def test_critic_free_estimator_path():
    """GRPO, group of 2, scores (1, 3): mean 2, unbiased std sqrt(2) -> A = -+1/sqrt(2) on every
    real token; no values needed."""
    r = hand_rollout()
    exp, _ = make_experience(
        r.index([0, 1]),
        torch.zeros(2, 4),
        torch.zeros(2, 4),
        torch.tensor([1.0, 3.0]),
        advantage_estimator="grpo",
        group_size=2,
        whiten_advantages=False,
    )
    s = 2**-0.5
    assert exp.advantages[0].tolist() == pytest.approx([-s] * 4, rel=1e-5)
    assert exp.advantages[1].tolist() == pytest.approx([s, s, 0, 0], rel=1e-5)
    assert exp.returns is None
    with pytest.raises(ValueError, match="GAE needs critic values"):
        make_experience(r, torch.zeros(4, 4), torch.zeros(4, 4), torch.ones(4))


def test_score_responses_eos_penalty_then_clip():
    """Raw (0.5, 0.7, 9.0), has_eos (T, F, T), penalty -1, clip 5 -> (0.5, -1, 5)."""
    fn = lambda p, r, **_: [0.5, 0.7, 9.0]  # noqa: E731
    has_eos = torch.tensor([True, False, True])
    scores, m = score_responses(
        fn, ["a"] * 3, ["x"] * 3, has_eos, missing_eos_penalty=-1.0, clip=5.0
    )
    assert scores.tolist() == pytest.approx([0.5, -1.0, 5.0])
    assert m["reward/raw_score_mean"] == pytest.approx(10.2 / 3, rel=1e-6)
    scores, _ = score_responses(fn, ["a"] * 3, ["x"] * 3, has_eos)
    assert scores.tolist() == pytest.approx([0.5, 0.7, 9.0])


def test_experience_index_keeps_widths():
    r = hand_rollout()
    exp, _ = make_experience(
        r, torch.zeros(4, 4), torch.zeros(4, 4), torch.ones(4), values=torch.zeros(4, 4)
    )
    sub = exp.index([3, 1])
    assert isinstance(sub, Experience) and len(sub) == 2
    assert sub.rollout.prompt_ids.shape == (2, 3) and sub.advantages.shape == (2, 4)
    assert torch.equal(sub.mask, r.response_mask[[3, 1]])


# --- against a direct computation on a real model --------------------------------------------


@pytest.fixture(scope="module")
def tok(tiny_base):
    return load_tokenizer(str(tiny_base))


@pytest.fixture(scope="module")
def model(tiny_base, tok):
    return load_causal_lm(str(tiny_base), tok, dropout=0.0).eval()


@pytest.fixture(scope="module")
def rollout(model, tok):
    """3 prompts of different lengths, 6 sampled tokens; row 1 cut after 3 tokens, row 2 after 1
    (as if EOS came there), so both prompt and response padding occur."""
    texts = ["What color is each of these: sky?", "apple", "说出这些东西的颜色：苹果。"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    r = generate(model, tok, ids, SamplingArgs(max_new_tokens=6, temperature=0.7), seed=0)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    resp = torch.where(mask.bool(), r.response_ids, torch.full_like(r.response_ids, PAD))
    return Rollout(r.prompt_ids, r.prompt_mask, resp, mask, torch.tensor([False, True, True]))


def unpadded(r: Rollout, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Row i without any padding: (ids [1, L], prompt length, response tokens)."""
    p = r.prompt_ids[i][r.prompt_mask[i].bool()]
    resp = r.response_ids[i][r.response_mask[i].bool()]
    return torch.cat([p, resp])[None], len(p), resp


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_direct_full_sequence(model, rollout, temperature):
    """lp[i, t] = log softmax(logits[Lp + t - 1] / T)[resp_t] on the unpadded sequence; 0 on pad."""
    got, ent = compute_logprobs(
        model, rollout, temperature=temperature, batch_size=2, with_entropy=True
    )
    assert got.shape == rollout.response_ids.shape
    for i in range(len(rollout)):
        ids, lp_len, resp = unpadded(rollout, i)
        with torch.no_grad():
            logits = model(ids).logits[0]
        logp = torch.log_softmax(logits / temperature, dim=-1)
        want = torch.stack([logp[lp_len + t - 1, resp[t]] for t in range(len(resp))])
        torch.testing.assert_close(got[i, : len(resp)], want, rtol=1e-5, atol=1e-5)
        assert (got[i, len(resp) :] == 0).all()
        p = logp.exp()
        h = -(p * logp).sum(-1)[lp_len - 1 : lp_len - 1 + len(resp)]
        torch.testing.assert_close(ent[i, : len(resp)], h, rtol=1e-4, atol=1e-5)


def test_temperature_is_applied(model, rollout):
    a, _ = compute_logprobs(model, rollout, temperature=1.0)
    b, _ = compute_logprobs(model, rollout, temperature=0.7)
    assert (a - b).abs().max() > 1e-2


def test_values_are_read_before_each_response_token(tiny_base, tok, rollout):
    """values[i, t] = V at the last token of prompt + response[:t], i.e. position Lp + t - 1 of the
    unpadded sequence (t = 0 -> the last prompt token)."""
    from simple_rlhf.models.reward import load_reward_model

    torch.manual_seed(0)
    critic = load_reward_model(str(tiny_base), tok, dropout=0.0).eval()
    got = compute_values(critic, rollout, batch_size=2)
    for i in range(len(rollout)):
        ids, lp_len, resp = unpadded(rollout, i)
        with torch.no_grad():
            v = token_values(critic, ids, torch.ones_like(ids))[0]
        torch.testing.assert_close(
            got[i, : len(resp)], v[lp_len - 1 : lp_len - 1 + len(resp)], rtol=1e-5, atol=1e-5
        )
        assert (got[i, len(resp) :] == 0).all()


def test_lora_reference_is_the_base_model(tiny_base, tok, model, rollout):
    """With LoRA the reference is the actor with its adapter disabled: equal to the base model's
    logprobs, while the adapted actor (non-zero B) differs."""
    from simple_rlhf.config import LoraArgs
    from simple_rlhf.models.lora import apply_lora

    actor = apply_lora(load_causal_lm(str(tiny_base), tok, dropout=0.0), LoraArgs(lora_dim=4))
    with torch.no_grad():
        for name, p in actor.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    base, _ = compute_logprobs(model, rollout)
    with reference(actor, None) as ref_model:
        ref_lp, _ = compute_logprobs(ref_model, rollout)
    adapted, _ = compute_logprobs(actor, rollout)
    torch.testing.assert_close(ref_lp, base, rtol=1e-5, atol=1e-5)
    assert (adapted - base).abs().max() > 1e-3
    with pytest.raises(ValueError, match="no LoRA adapter"), reference(model, None):
        pass


# --- update-side plumbing ----------------------------------------------------------------------


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_micro_batch_weights_reproduce_the_full_batch(aggregation):
    """sum_k w_k * aggregate(micro_k) == aggregate(whole minibatch), micro-batches of 2 of 8 rows
    with unequal lengths and one empty row."""
    g = torch.Generator().manual_seed(0)
    loss = torch.randn(8, 5, generator=g)
    lengths = torch.tensor([5, 1, 3, 0, 2, 5, 4, 1])
    mask = (torch.arange(5)[None] < lengths[:, None]).long()
    full = aggregate(loss, mask, aggregation, 5.0)
    acc = sum(
        micro_batch_weight(aggregation, mask[s : s + 2], mask)
        * aggregate(loss[s : s + 2], mask[s : s + 2], aggregation, 5.0)
        for s in range(0, 8, 2)
    )
    torch.testing.assert_close(acc, full, rtol=1e-6, atol=1e-7)


def test_minibatches_cover_the_buffer_once_and_reshuffle():
    a = minibatches(8, 2, seed=0)
    b = minibatches(8, 2, seed=1)
    assert [len(x) for x in a] == [2, 2, 2, 2]
    assert sorted(i for x in a for i in x) == list(range(8))
    assert a != b and a == minibatches(8, 2, seed=0)
