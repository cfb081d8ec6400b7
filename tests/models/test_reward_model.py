"""Tests for the reward-model read-out (last real token), saving/reloading and RewardScorer."""

from __future__ import annotations

import json

import pytest
import torch

from simple_rlhf.data.tokenize import encode_prompt, pad
from simple_rlhf.infra.checkpoint import save_hf_model
from simple_rlhf.models.forward import token_values
from simple_rlhf.models.loading import load_tokenizer
from simple_rlhf.models.reward import (
    STATS_FILE,
    RewardScorer,
    load_reward_model,
    read_stats,
    sequence_scores,
)

PROMPTS = [
    [{"role": "user", "content": "What color is each of these: apple, sky?"}],
    [{"role": "user", "content": "说出这些东西的颜色：苹果。"}],
    [{"role": "user", "content": "What color is each of these: coal?"}],
]
RESPONSES = ["apple is red. sky is blue.", "苹果是红色。", "coal is black. Hope this helps!"]


@pytest.fixture(scope="module")
def tok(tiny_base):
    return load_tokenizer(str(tiny_base))


@pytest.fixture(scope="module")
def rm(tiny_base, tok):
    """A tiny RM with a randomly initialised head (seed 0), in eval mode."""
    torch.manual_seed(0)
    model = load_reward_model(str(tiny_base), tok).eval()
    with torch.no_grad():  # a larger head so scores are well apart from rounding noise
        model.score.weight.normal_(0.0, 1.0)
    return model


def alone(model, seq: list[int]) -> torch.Tensor:
    """Per-token values ``[L]`` of one sequence run without any padding."""
    ids = torch.tensor([seq])
    with torch.no_grad():
        return token_values(model, ids, torch.ones_like(ids))[0]


def padded(seqs: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    return pad(seqs, pad_id, side), pad([[1] * len(s) for s in seqs], 0, side)


@pytest.mark.parametrize("side", ["right", "left"])
def test_score_read_at_last_real_token_for_either_padding_side(rm, tok, side):
    """Rows of lengths 6, 9, 3 padded to 9: each row's score equals its value at position L-1
    when run alone, and is not the value read at the padded end of a short row."""
    g = torch.Generator().manual_seed(1)
    eos = tok.eos_token_id
    seqs = [torch.randint(10, 600, (n - 1,), generator=g).tolist() + [eos] for n in (6, 9, 3)]
    expected = torch.stack([alone(rm, s)[-1] for s in seqs])
    ids, mask = padded(seqs, tok.pad_token_id, side)
    with torch.no_grad():
        scores = sequence_scores(rm, ids, mask)
        values = token_values(rm, ids, mask)  # [3, 9]
    assert scores.shape == (3,)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    wrong_col = 0 if side == "left" else -1  # a pad position of the short row 2
    assert abs(float(values[2, wrong_col] - expected[2])) > 1e-3


def test_bos_prepending_tokenizer_and_bos_equal_to_eos(rm, tok, tiny_base):
    """(1) A tokenizer that prepends BOS: encoded rows start with BOS, end with EOS, and the score
    is the value at the EOS (position L-1), for right and left padding.
    (2) GPT-2 style BOS == EOS, ids by hand: [eos, a, b, c, eos] and [eos, d, eos]; the read-out is
    the last real position, not the first EOS at position 0."""
    from tokenizers import processors

    tok_bos = load_tokenizer(str(tiny_base))
    tok_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok_bos.bos_token_id)]
    )
    assert encode_prompt(tok_bos, PROMPTS[0])[0] == tok_bos.bos_token_id
    scorer = RewardScorer(rm, tok_bos)
    ids, mask, _ = scorer.encode(PROMPTS, RESPONSES)
    lengths = mask.sum(-1).tolist()
    rows = [ids[i, : lengths[i]].tolist() for i in range(3)]
    assert all(r[0] == tok.bos_token_id and r[-1] == tok.eos_token_id for r in rows)
    expected = torch.stack([alone(rm, r)[-1] for r in rows])
    torch.testing.assert_close(scorer.score_ids(ids, mask), expected, rtol=1e-5, atol=1e-5)
    left_ids, left_mask = padded(rows, tok.pad_token_id, "left")
    torch.testing.assert_close(
        scorer.score_ids(left_ids, left_mask), expected, rtol=1e-5, atol=1e-5
    )

    eos = tok.eos_token_id
    seqs = [[eos, 300, 301, 302, eos], [eos, 400, eos]]
    for side in ("right", "left"):
        ids, mask = padded(seqs, tok.pad_token_id, side)
        with torch.no_grad():
            got = sequence_scores(rm, ids, mask)
        for i, s in enumerate(seqs):
            values = alone(rm, s)
            assert got[i].item() == pytest.approx(values[-1].item(), rel=1e-5, abs=1e-5)
            assert abs(got[i].item() - values[0].item()) > 1e-3


def test_identical_responses_score_identically(rm, tok):
    """The same (prompt, response) twice in one batch, next to a longer row: equal scores, up to
    float rounding (a CPU matmul kernel may round two rows of one batch differently: seen as
    1e-6 apart on some x86 machines)."""
    scorer = RewardScorer(rm, tok)
    out = scorer.score([PROMPTS[0], PROMPTS[0], PROMPTS[1]], [RESPONSES[0], RESPONSES[0], "x" * 40])
    assert out[0] == pytest.approx(out[1], rel=1e-6, abs=1e-6)
    assert out[0] != pytest.approx(out[2], abs=1e-3)


def test_post_process_normalises_and_clips(rm, tok):
    """stats mean 0.5, std 2: raw (2.5, -1.5, 0.5, 8.5) -> (1, -1, 0, 4); clip 3 -> (1, -1, 0, 3);
    normalize off -> raw; no stats -> normalisation off."""
    raw = torch.tensor([2.5, -1.5, 0.5, 8.5])
    stats = {"mean": 0.5, "std": 2.0}
    out = RewardScorer(rm, tok, stats=stats).post_process(raw)
    torch.testing.assert_close(out, torch.tensor([1.0, -1.0, 0.0, 4.0]), rtol=1e-6, atol=0.0)
    out = RewardScorer(rm, tok, stats=stats, clip=3.0).post_process(raw)
    torch.testing.assert_close(out, torch.tensor([1.0, -1.0, 0.0, 3.0]), rtol=1e-6, atol=0.0)
    torch.testing.assert_close(
        RewardScorer(rm, tok, stats=stats, normalize=False).post_process(raw), raw
    )
    assert RewardScorer(rm, tok, stats=None).normalize is False


def test_save_reload_identical_scores_and_hf_loads_it(rm, tok, tmp_path):
    """save_hf_model -> RewardScorer.load gives the same raw scores; the stored stats are applied
    ((raw - 1) / 4); AutoModelForSequenceClassification loads the folder as is (num_labels 1,
    pad id set) and its logits on a right-padded batch equal our last-token read-out."""
    from transformers import AutoModelForSequenceClassification

    out = save_hf_model(
        rm, tok, tmp_path / "rm", extra_json={STATS_FILE: {"mean": 1.0, "std": 4.0}}
    )
    assert read_stats(out) == {"mean": 1.0, "std": 4.0}
    before = RewardScorer(rm, tok, normalize=False).score(PROMPTS, RESPONSES)
    reloaded = RewardScorer.load(str(out), normalize=False)
    assert reloaded.score(PROMPTS, RESPONSES) == pytest.approx(before, rel=1e-6, abs=1e-6)
    normalised = RewardScorer.load(str(out)).score(PROMPTS, RESPONSES)
    assert normalised == pytest.approx([(r - 1.0) / 4.0 for r in before], rel=1e-5, abs=1e-6)

    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    cfg = json.loads((out / "config.json").read_text())
    assert hf.config.num_labels == 1 and cfg["pad_token_id"] == tok.pad_token_id
    ids, mask, _ = reloaded.encode(PROMPTS, RESPONSES)
    with torch.no_grad():
        logits = hf(input_ids=ids, attention_mask=mask).logits  # [B, 1]
    assert logits.shape == (3, 1)
    torch.testing.assert_close(logits[:, 0], torch.tensor(before), rtol=1e-5, atol=1e-5)
