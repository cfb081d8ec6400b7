"""Tests for per-token log-probs, entropies and sequence log-probs."""

import math

import pytest
import torch

from simple_rlhf.models.logprobs import (
    causal_lm_logprobs,
    entropy_from_logits,
    sequence_logprobs,
    token_logprobs,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


def test_token_logprobs_hand_value():
    """logits (0, ln2, ln3) -> softmax (1/6, 2/6, 3/6).

    label 2 -> log(1/2) = -0.693147; label 0 -> log(1/6) = -1.791759.
    τ = 2: z = (0, ln2/2, ln3/2), exp z = (1, √2, √3) -> p(2) = √3 / (1 + √2 + √3) = 1.732051 / 4.146264 = 0.417738.
    """
    logits = torch.tensor([[[0.0, LN2, LN3], [0.0, LN2, LN3]]])  # [1, 2, 3]
    labels = torch.tensor([[2, 0]])
    out = token_logprobs(logits, labels)
    assert out.shape == (1, 2)
    assert out[0, 0].item() == pytest.approx(math.log(0.5), rel=1e-5)
    assert out[0, 1].item() == pytest.approx(math.log(1 / 6), rel=1e-5)

    out_t = token_logprobs(logits, labels, temperature=2.0)
    p2 = math.sqrt(3) / (1 + math.sqrt(2) + math.sqrt(3))
    assert p2 == pytest.approx(0.417738, rel=1e-5)
    assert out_t[0, 0].item() == pytest.approx(math.log(p2), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.5])
def test_token_logprobs_matches_naive_log_softmax(temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 11, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 11, (3, 4), generator=g)
    ref = torch.log_softmax(logits / temperature, dim=-1).gather(-1, labels.unsqueeze(-1))
    out = token_logprobs(logits.float(), labels, temperature=temperature)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref.squeeze(-1), rtol=1e-5, atol=1e-5)


def test_token_logprobs_bf16_input_returns_float32():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 7, generator=g).to(torch.bfloat16)
    labels = torch.randint(0, 7, (2, 3), generator=g)
    out = token_logprobs(logits, labels)
    ref = torch.log_softmax(logits.double(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_token_logprobs_ignore_index_gives_zero():
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, -100, 4], [-100, -100, 0]])
    out = token_logprobs(logits, labels)
    assert out[0, 1] == 0 and out[1, 0] == 0 and out[1, 1] == 0
    assert torch.all(out[labels != -100] < 0)


def test_token_logprobs_shape_mismatch_raises():
    with pytest.raises(ValueError):
        token_logprobs(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def test_token_logprobs_rejects_non_positive_temperature():
    with pytest.raises(ValueError):
        token_logprobs(torch.randn(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), temperature=0.0)


def test_causal_lm_logprobs_alignment():
    """Position t of the logits scores token t + 1.

    V = 3, ids = [0, 2, 1]. logits[:, 0] = (0, ln2, ln3) scores ids[1] = 2 -> log(1/2);
    logits[:, 1] = (ln3, ln2, 0) scores ids[2] = 1 -> log(2/6); logits[:, 2] is unused.
    """
    logits = torch.tensor([[[0.0, LN2, LN3], [LN3, LN2, 0.0], [50.0, 0.0, 0.0]]])
    ids = torch.tensor([[0, 2, 1]])
    out = causal_lm_logprobs(logits, ids)
    assert out.shape == (1, 2)
    assert out[0, 0].item() == pytest.approx(math.log(1 / 2), rel=1e-5)
    assert out[0, 1].item() == pytest.approx(math.log(1 / 3), rel=1e-5)


def test_entropy_hand_value_and_uniform():
    """p = (1/6, 1/3, 1/2): H = (1/6)ln6 + (1/3)ln3 + (1/2)ln2 = 1.011404. Uniform over 4: ln4."""
    logits = torch.tensor([[[0.0, LN2, LN3], [5.0, 5.0, 5.0]]])
    h = entropy_from_logits(logits)
    expected = math.log(6) / 6 + math.log(3) / 3 + math.log(2) / 2
    assert expected == pytest.approx(1.011404, rel=1e-5)
    assert h[0, 0].item() == pytest.approx(expected, rel=1e-5)
    assert h[0, 1].item() == pytest.approx(math.log(3), rel=1e-5)


def test_entropy_matches_naive_with_temperature():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 9, generator=g, dtype=torch.float64) * 4
    for tau in (1.0, 0.5, 2.0):
        logp = torch.log_softmax(logits / tau, dim=-1)
        ref = -(logp.exp() * logp).sum(-1)
        out = entropy_from_logits(logits.float(), temperature=tau)
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_sequence_logprobs_hand_and_masked_garbage():
    """lp = [[-1, -2, *], [-3, *, *]] with * masked.

    sum: [-3, -3]; mean: [-1.5, -3]. Masked positions hold NaN / 1e9 and change nothing.
    """
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    lp = torch.tensor([[-1.0, -2.0, float("nan")], [-3.0, 1e9, float("inf")]], requires_grad=True)
    total = sequence_logprobs(lp, mask)
    mean = sequence_logprobs(lp, mask, average=True)
    torch.testing.assert_close(total, torch.tensor([-3.0, -3.0]), rtol=1e-6, atol=0)
    torch.testing.assert_close(mean, torch.tensor([-1.5, -3.0]), rtol=1e-6, atol=0)
    (total.sum() + mean.sum()).backward()
    assert torch.isfinite(lp.grad).all()
    assert torch.all(lp.grad[mask == 0] == 0)

    clean = torch.tensor([[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0]])
    torch.testing.assert_close(sequence_logprobs(clean, mask), total.detach())


def test_sequence_logprobs_empty_row_is_zero():
    lp = torch.tensor([[-1.0, -1.0]])
    mask = torch.zeros(1, 2)
    assert sequence_logprobs(lp, mask).item() == 0.0
    assert sequence_logprobs(lp, mask, average=True).item() == 0.0
