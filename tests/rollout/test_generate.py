"""The generation engine on its own: seeded and greedy determinism, max tokens, EOS truncation and
masks, left padding. Uses the tiny base model (random weights: it rarely emits EOS by itself, so an
extra EOS id is forced where a test needs one)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from simple_rlhf.models.loading import load_causal_lm, load_tokenizer
from simple_rlhf.rollout.generate import (
    Rollout,
    SamplingArgs,
    concat_rollouts,
    decode_responses,
    generate,
    left_pad,
    truncate_after_eos,
)

PAD, EOS = 0, 2


@pytest.fixture(scope="module")
def tok(tiny_base):
    return load_tokenizer(str(tiny_base))


@pytest.fixture(scope="module")
def model(tiny_base, tok):
    return load_causal_lm(str(tiny_base), tok).eval()


def prompts(tok):
    """Three prompts of different lengths (so two of them are left-padded)."""
    texts = ["What color is each of these: sky?", "apple", "说出这些东西的颜色：苹果、天空。"]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


SAMPLED = SamplingArgs(max_new_tokens=6, temperature=1.0)
GREEDY = SamplingArgs(max_new_tokens=6, temperature=0.0)


def test_left_pad_hand_example():
    """[[5, 6, 7], [8]] -> ids [[5, 6, 7], [0, 0, 8]], mask [[1, 1, 1], [0, 0, 1]]."""
    ids, mask = left_pad([[5, 6, 7], [8]], PAD)
    assert ids.tolist() == [[5, 6, 7], [PAD, PAD, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_truncate_after_eos_hand_example():
    """Row 0: EOS at column 1 -> keep [5, EOS], mask [1, 1, 0, 0].
    Row 1: no EOS -> all kept, has_eos False.  Row 2: EOS first -> mask [1, 0, 0, 0] (empty text).
    Row 3: two EOS -> cut after the first."""
    resp = torch.tensor([[5, EOS, 7, 8], [5, 6, 7, 8], [EOS, 3, 4, 5], [4, EOS, EOS, 9]])
    ids, mask, has_eos = truncate_after_eos(resp, [EOS], PAD)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert ids.tolist() == [
        [5, EOS, PAD, PAD],
        [5, 6, 7, 8],
        [EOS, PAD, PAD, PAD],
        [4, EOS, PAD, PAD],
    ]
    assert has_eos.tolist() == [True, False, True, True]


def test_seeded_sampling_is_deterministic(model, tok):
    a = generate(model, tok, prompts(tok), SAMPLED, seed=3)
    b = generate(model, tok, prompts(tok), SAMPLED, seed=3)
    c = generate(model, tok, prompts(tok), SAMPLED, seed=4)
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_greedy_is_deterministic_and_ignores_seed(model, tok):
    a = generate(model, tok, prompts(tok), GREEDY, seed=1)
    b = generate(model, tok, prompts(tok), GREEDY, seed=2)
    assert torch.equal(a.response_ids, b.response_ids)


def test_left_padding_does_not_change_greedy_answers(model, tok):
    """Each prompt alone (no padding) gives the same greedy response as inside the padded batch."""
    batch = generate(model, tok, prompts(tok), GREEDY)
    assert batch.prompt_mask[:, 0].tolist() != [1, 1, 1]  # someone is left-padded
    for i, p in enumerate(prompts(tok)):
        alone = generate(model, tok, [p], GREEDY)
        n = int(alone.response_mask.sum())
        assert batch.response_ids[i, :n].tolist() == alone.response_ids[0, :n].tolist()
        # the prompt sits flush right, padding on the left
        P = batch.prompt_ids.shape[1]
        assert batch.prompt_ids[i, P - len(p) :].tolist() == p
        assert batch.prompt_mask[i].tolist() == [0] * (P - len(p)) + [1] * len(p)


def test_max_new_tokens_and_masks_without_eos(model, tok):
    """Random weights never say EOS in 6 tokens here: width 6, mask all ones, has_eos False."""
    r = generate(model, tok, prompts(tok), SAMPLED, seed=0)
    assert r.response_ids.shape == (3, 6)
    assert r.response_mask.tolist() == [[1] * 6] * 3
    assert r.has_eos.tolist() == [False] * 3
    assert r.input_ids.shape == (3, r.prompt_ids.shape[1] + 6)
    assert torch.equal(r.attention_mask, torch.cat([r.prompt_mask, r.response_mask], 1))


def test_eos_truncation_end_to_end(model, tok):
    """Make the token greedy decoding emits 3rd (for prompt 0) an extra EOS id: the response stops
    there, the EOS is kept in the mask, everything after it is pad and masked."""
    free = generate(model, tok, prompts(tok), GREEDY)
    stop = int(free.response_ids[0, 2])
    first = (free.response_ids[0] == stop).nonzero()[0].item()
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, stop]
    try:
        r = generate(model, tok, prompts(tok), GREEDY)
    finally:
        model.generation_config.eos_token_id = old
    assert bool(r.has_eos[0])
    assert r.response_mask[0].tolist()[: first + 1] == [1] * (first + 1)
    assert r.response_mask[0, first + 1 :].sum() == 0
    assert (r.response_ids[0, first + 1 :] == tok.pad_token_id).all()
    assert r.response_ids[0, first] == stop
    assert r.response_lengths[0] == first + 1


def test_chunked_generation_concatenates(model, tok):
    """generation_batch_size 2 over 3 prompts: the same greedy answers as one batch of 3."""
    one = generate(model, tok, prompts(tok), GREEDY)
    two = generate(model, tok, prompts(tok), dataclasses.replace(GREEDY, generation_batch_size=2))
    assert torch.equal(one.response_ids, two.response_ids)
    assert torch.equal(one.prompt_mask, two.prompt_mask)


def test_concat_rollouts_repads():
    """Widths P=1/R=2 and P=2/R=1: prompts re-left-padded to 2, responses right-padded to 2."""
    a = Rollout(
        torch.tensor([[7]]),
        torch.tensor([[1]]),
        torch.tensor([[4, EOS]]),
        torch.tensor([[1, 1]]),
        torch.tensor([True]),
    )
    b = Rollout(
        torch.tensor([[8, 9]]),
        torch.tensor([[1, 1]]),
        torch.tensor([[5]]),
        torch.tensor([[1]]),
        torch.tensor([False]),
    )
    r = concat_rollouts([a, b], PAD)
    assert r.prompt_ids.tolist() == [[PAD, 7], [8, 9]]
    assert r.prompt_mask.tolist() == [[0, 1], [1, 1]]
    assert r.response_ids.tolist() == [[4, EOS], [5, PAD]]
    assert r.response_mask.tolist() == [[1, 1], [1, 0]]
    assert r.has_eos.tolist() == [True, False]


def test_decode_drops_eos_and_padding(tok):
    ids = tok("sky is blue.", add_special_tokens=False)["input_ids"]
    resp = torch.tensor(
        [ids + [tok.eos_token_id, tok.pad_token_id], [tok.eos_token_id] + [0] * len(ids) + [0]]
    )
    mask = torch.tensor([[1] * (len(ids) + 1) + [0], [1] + [0] * (len(ids) + 1)])
    r = Rollout(
        torch.tensor([[5], [5]]),
        torch.ones(2, 1, dtype=torch.long),
        resp,
        mask,
        torch.tensor([True, True]),
    )
    assert decode_responses(tok, r) == ["sky is blue.", ""]


def test_generate_restores_training_mode(model, tok):
    model.train()
    generate(model, tok, prompts(tok)[:1], GREEDY)
    assert model.training
    model.eval()


def test_sampling_args_validation():
    from simple_rlhf.config import ConfigError

    with pytest.raises(ConfigError, match="max_new_tokens"):
        SamplingArgs(max_new_tokens=0)
    with pytest.raises(ConfigError, match="top_p"):
        SamplingArgs(top_p=0.0)


def test_model_generation_config_does_not_change_sampling(model, tok):
    """A Hub model's generation_config.json may carry repetition_penalty, min_new_tokens, typical_p,
    suppress_tokens...; none of them may reach the sampler (RL recomputes softmax(logits / T))."""
    plain = generate(model, tok, prompts(tok), SAMPLED, seed=5)
    g = model.generation_config
    saved = {
        k: getattr(g, k, None)
        for k in (
            "repetition_penalty",
            "min_new_tokens",
            "typical_p",
            "suppress_tokens",
            "no_repeat_ngram_size",
        )
    }
    g.repetition_penalty, g.min_new_tokens, g.typical_p = 5.0, 6, 0.3
    g.suppress_tokens, g.no_repeat_ngram_size = list(range(200)), 1
    try:
        polluted = generate(model, tok, prompts(tok), SAMPLED, seed=5)
    finally:
        for k, v in saved.items():
            setattr(g, k, v)
    assert torch.equal(plain.response_ids, polluted.response_ids)
