"""Distillation trainer: prompt/response boundary, response-only masking, the lmbda coin, SeqKD,
vocabulary check, resume, and a short run that moves a fresh student towards its teacher."""

from __future__ import annotations

import json
import math
import types

import pytest
import torch

from simple_rlhf.config import load_config
from simple_rlhf.data.records import to_sft
from simple_rlhf.data.tokenize import IGNORE_INDEX, Limits, encode_sft
from simple_rlhf.models.loading import load_causal_lm, load_tokenizer
from simple_rlhf.rollout.generate import SamplingArgs, generate
from simple_rlhf.trainers.distill import (
    DistillArgs,
    DistillConfig,
    VocabMismatchError,
    accumulate_distill,
    check_same_vocab,
    distill_loss,
    evaluate_divergence,
    is_on_policy,
    load_teacher,
    pack,
    run,
    slow_start_note,
    split_prompt_response,
    teacher_generations,
    unpack,
)

EOS = 9


class TableModel(torch.nn.Module):
    """A 'model' whose logits are a fixed table ``[B, T, V]`` (a leaf tensor we can inspect)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(logits.clone())

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        B, T = input_ids.shape
        return types.SimpleNamespace(logits=self.table[:B, :T])


def test_split_prompt_response_at_the_label_boundary(tiny_base) -> None:
    """labels == -100 marks the prompt: the prompt ends with the template's generation prompt and
    the response (what the student is distilled on) is the answer plus EOS."""
    tok = load_tokenizer(str(tiny_base))
    rec = to_sft(
        {
            "messages": [
                {"role": "user", "content": "What color is each of these: sky?"},
                {"role": "assistant", "content": "sky is blue."},
            ]
        }
    )
    (ex,), _ = encode_sft(tok, [rec], Limits(256, 192))
    prompt, response = split_prompt_response(ex)
    assert prompt + response == ex["input_ids"]
    assert tok.decode(prompt).endswith("<|assistant|>\n")
    assert response[-1] == tok.eos_token_id
    assert tok.decode(response[:-1]) == "sky is blue."
    with pytest.raises(ValueError, match="no response token"):
        split_prompt_response({"input_ids": [1, 2], "labels": [IGNORE_INDEX, IGNORE_INDEX]})


def test_pack_is_generation_layout_and_unpack_inverts_it() -> None:
    """Prompts left-padded, responses right-padded with a mask; has_eos from the last token."""
    pairs = [([1, 2], [3, 4, EOS]), ([5, 6, 7], [8])]
    r = pack(pairs, pad_id=0, eos_id=EOS)
    assert r.prompt_ids.tolist() == [[0, 1, 2], [5, 6, 7]]
    assert r.prompt_mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert r.response_ids.tolist() == [[3, 4, EOS], [8, 0, 0]]
    assert r.response_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert r.has_eos.tolist() == [True, False]
    assert unpack(r) == pairs


def test_prompt_and_padding_never_enter_the_loss() -> None:
    """Rows: prompt [pad,1,2] + response [3,4,EOS]; prompt [5,6,7] + response [8,pad,pad].
    P = 3, so columns 2, 3, 4 predict response tokens; row 1 has only column 2 real. The loss is
    the mean of KL(p_T || p_S) (beta 0) over those 4 positions, its gradient w.r.t. the student's
    logits is zero everywhere else, and any change of the teacher's logits outside them leaves the
    loss unchanged."""
    torch.manual_seed(0)
    B, T, V = 2, 6, 11
    s_logits, t_logits = torch.randn(B, T, V), torch.randn(B, T, V)
    rollout = pack([([1, 2], [3, 4, EOS]), ([5, 6, 7], [8])], pad_id=0, eos_id=EOS)
    student, teacher = TableModel(s_logits), TableModel(t_logits)
    args = DistillArgs(beta=0.0, temperature=1.0)
    loss, _ = distill_loss(student, teacher, rollout, args, vocab=V)
    loss.backward()

    used = [(0, 2), (0, 3), (0, 4), (1, 2)]
    kls = []
    for b, t in used:
        log_p, log_q = t_logits[b, t].log_softmax(-1), s_logits[b, t].log_softmax(-1)
        kls.append((log_p.exp() * (log_p - log_q)).sum())
    torch.testing.assert_close(loss, torch.stack(kls).mean(), rtol=1e-5, atol=1e-6)

    grad = student.table.grad.abs().sum(-1)  # [B, T]
    expected = torch.zeros(B, T, dtype=torch.bool)
    for b, t in used:
        expected[b, t] = True
    assert (grad[~expected] == 0).all()
    assert (grad[expected] > 0).all()

    noisy = t_logits.clone()
    noisy[~expected] += 100 * torch.randn_like(noisy[~expected])
    loss2, _ = distill_loss(student, TableModel(noisy), rollout, args, vocab=V)
    torch.testing.assert_close(loss2, loss, rtol=0, atol=0)


def test_accumulated_step_is_the_token_mean_over_the_whole_step() -> None:
    """Micro-batch A has 4 response tokens (mean loss L_A), B has 1 (L_B): the step's loss is
    (4 L_A + 1 L_B) / 5 and its gradient equals that of this token mean computed directly (not
    the mean of the two micro-batch means, (L_A + L_B) / 2)."""
    torch.manual_seed(1)
    V = 11
    s_logits, t_logits = torch.randn(2, 6, V), torch.randn(2, 6, V)
    a = pack([([1, 2], [3, 4, EOS]), ([5, 6, 7], [8])], pad_id=0, eos_id=EOS)  # 3 + 1 tokens
    b = pack([([1, 2, 3], [4])], pad_id=0, eos_id=EOS)  # 1 token
    args = DistillArgs(beta=0.5)
    student, teacher = TableModel(s_logits), TableModel(t_logits)
    loss, tokens, _ = accumulate_distill(student, teacher, [a, b], args, vocab=V)
    grad = student.table.grad.clone()
    assert tokens == int(a.attention_mask.sum() + b.attention_mask.sum()) == 13
    student.table.grad = None
    la, _ = distill_loss(student, teacher, a, args, vocab=V)
    lb, _ = distill_loss(student, teacher, b, args, vocab=V)
    direct = (4 * la + lb) / 5
    direct.backward()
    assert loss == pytest.approx(float(direct.detach()), rel=1e-6)
    assert abs(loss - float((la + lb).detach() / 2)) > 1e-3  # the two normalisations differ here
    torch.testing.assert_close(grad, student.table.grad, rtol=1e-5, atol=1e-7)


def test_held_out_metrics_by_hand() -> None:
    """Student = teacher: JSD and forward KL are 0. NLL by hand: row 0 response [3, 4, EOS] read
    at columns 2, 3, 4, row 1 response [8] at column 2, so
    nll = -(log p[0,2,3] + log p[0,3,4] + log p[0,4,EOS] + log p[1,2,8]) / 4, perplexity exp(nll)."""
    torch.manual_seed(2)
    V = 11
    logits = torch.randn(2, 6, V)
    pairs = [([1, 2], [3, 4, EOS]), ([5, 6, 7], [8])]
    model = TableModel(logits)
    args = DistillArgs(beta=0.5)
    out = evaluate_divergence(model, model, pairs, args, V, batch_size=2, pad_id=0, eos_id=EOS)
    logp = logits.log_softmax(-1)
    nll = -(logp[0, 2, 3] + logp[0, 3, 4] + logp[0, 4, EOS] + logp[1, 2, 8]) / 4
    assert out["eval/distill_loss"] == pytest.approx(0.0, abs=1e-6)
    assert out["eval/forward_kl"] == pytest.approx(0.0, abs=1e-6)
    assert out["eval/nll"] == pytest.approx(float(nll), rel=1e-5)
    assert out["eval/perplexity"] == pytest.approx(math.exp(float(nll)), rel=1e-5)


def test_lmbda_coin_frequency_over_many_micro_batches() -> None:
    """Share of on-policy micro-batches over 4000 seeded coins is within 0.025 of lmbda (3 binomial
    standard deviations at lmbda 0.5: 3 * sqrt(0.25 / 4000) = 0.024); 0 and 1 are exact; the
    sequence depends only on (seed, index)."""
    n = 4000
    for lmbda in (0.1, 0.5, 0.8):
        share = sum(is_on_policy(1234, i, lmbda) for i in range(n)) / n
        assert abs(share - lmbda) < 0.025, (lmbda, share)
    assert not any(is_on_policy(1234, i, 0.0) for i in range(200))
    assert all(is_on_policy(1234, i, 1.0) for i in range(200))
    a = [is_on_policy(7, i, 0.5) for i in range(64)]
    assert a == [is_on_policy(7, i, 0.5) for i in range(64)]
    assert a != [is_on_policy(8, i, 0.5) for i in range(64)]


def test_slow_start_note_only_for_far_students_with_reverse_kl_or_own_samples() -> None:
    """The note fires when the held-out forward KL is above 1 nat/token (a fresh tiny student: 6.37)
    and the run has beta > 0 or lmbda > 0; never for supervised forward KL (lmbda 0, beta 0) and
    never for a student already close to its teacher (an SFT student: 0.03-0.13)."""
    far, near = 6.37, 0.13
    assert slow_start_note(DistillArgs(lmbda=0.0, beta=0.0), far) is None
    assert slow_start_note(DistillArgs(lmbda=1.0, beta=1.0), near) is None
    for lmbda, beta in ((1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (0.5, 0.5)):
        note = slow_start_note(DistillArgs(lmbda=lmbda, beta=beta), far)
        assert note is not None and "6.37" in note and "--lmbda 0 --beta 0" in note


def test_seq_kd_replaces_responses_with_teacher_generations(tiny_sft) -> None:
    """Same prompts, responses = the teacher's greedy generations (with their EOS), which differ
    from the dataset's made-up responses."""
    tok = load_tokenizer(str(tiny_sft))
    teacher = load_causal_lm(str(tiny_sft), tok)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What color is each of these: sky, grass?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    pairs = [(p_ids, [5, 6, tok.eos_token_id]), (p_ids[:-3] + p_ids[-3:], [7, tok.eos_token_id])]
    greedy = SamplingArgs(temperature=0.0, max_new_tokens=32)
    new = teacher_generations(teacher, tok, pairs, greedy, seed=0)
    direct = unpack(generate(teacher, tok, [p for p, _ in pairs], greedy, seed=0))
    assert [p for p, _ in new] == [p for p, _ in pairs]
    assert new == direct
    assert all(r != old for (_, r), (_, old) in zip(new, pairs, strict=True))
    assert new[0][1][-1] == tok.eos_token_id


def test_vocabulary_mismatch_is_a_clear_error(tiny_base, tiny_sft) -> None:
    """Different size -> error naming both sizes; same size, different ids -> error naming a
    token; the same tokenizer passes; the trainer checks before loading the teacher's weights."""
    tok = load_tokenizer(str(tiny_base))
    check_same_vocab(tok, load_tokenizer(str(tiny_sft)))
    bigger = load_tokenizer(str(tiny_base))
    bigger.add_tokens(["zzz_new_token"])
    with pytest.raises(VocabMismatchError, match=r"vocabulary sizes 670 \(teacher\) vs 669"):
        check_same_vocab(tok, bigger)

    class Swapped:
        def __init__(self, base):
            self.base, self.vocab = base, dict(base.get_vocab())
            a, b = "<s>", "</s>"
            self.vocab[a], self.vocab[b] = self.vocab[b], self.vocab[a]

        def __len__(self):
            return len(self.base)

        def get_vocab(self):
            return self.vocab

    with pytest.raises(
        VocabMismatchError, match="token '</?s>' has id [12] in the teacher's and [21] in"
    ):
        check_same_vocab(tok, Swapped(tok))
    cfg = load_config(DistillConfig, overrides={"teacher_model_name_or_path": str(tiny_sft)})
    with pytest.raises(VocabMismatchError):
        load_teacher(cfg, bigger)


def _cfg(tmp_path, teacher, **kw):
    base = {
        "teacher_model_name_or_path": str(teacher),
        "output_dir": str(tmp_path),
        "report_to": ["jsonl"],
        "progress_bar": False,
        "max_eval_samples": 32,
        "max_new_tokens": 24,
        "gold_eval_prompts": 0,
        "logging_steps": 1,
    }
    base.update(kw)
    return load_config(DistillConfig, overrides=base)


def test_resume_reproduces_an_uninterrupted_run(tmp_path, tiny_sft) -> None:
    """Constant LR, lmbda 0.5 (both kinds of batch): 2 steps + resume to 4 steps gives the same
    student weights as 4 steps in one go (the coin and generation seeds depend on the micro-batch
    index, data position and RNG states come from the checkpoint)."""
    common = {
        "lr_scheduler_type": "constant",
        "lmbda": 0.5,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "max_new_tokens": 8,
        "max_eval_samples": 4,
    }
    out_a = run(_cfg(tmp_path / "a", tiny_sft, max_steps=4, **common))
    run(_cfg(tmp_path / "b", tiny_sft, max_steps=2, save_steps=2, **common))
    out = run(_cfg(tmp_path / "b", tiny_sft, max_steps=4, save_steps=2, **common))
    assert out["steps"] == 4
    assert 0 < out["on_policy_share"] < 1
    assert out["on_policy_share"] == out_a["on_policy_share"]
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "a" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.learning
def test_short_run_moves_fresh_student_towards_teacher(tmp_path, tiny_sft, learning) -> None:
    """Fresh tiny student, teacher = the tiny SFT model, lmbda 0.5, beta 0 (forward KL), 30 steps
    of 8: the held-out KL(teacher || student) falls below 0.6 of its starting value (ratio
    0.42-0.45 over 5 seeds, benchmarks/learning_tests_results.md); the share of on-policy
    micro-batches is exactly the seeded coins' share; gold is measured for student and teacher;
    the student is saved and loads."""
    kw = {"max_steps": 30, "per_device_train_batch_size": 8, "max_new_tokens": 16}
    kw["seed"] = learning.seed
    out = run(_cfg(tmp_path, tiny_sft, gold_eval_prompts=8, lmbda=0.5, beta=0.0, **kw))
    before, after = out["before"]["eval/distill_loss"], out["after"]["eval/distill_loss"]
    learning.at_most("distill", "eval/distill_loss after / before", after / before, 0.6)
    coins = sum(is_on_policy(learning.seed, i, 0.5) for i in range(30)) / 30
    assert out["on_policy_share"] == pytest.approx(coins, abs=1e-12)
    assert 0.0 < coins < 1.0
    assert "eval/gold_greedy" in out["after"] and "teacher/gold_greedy" in out["teacher"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("rollout/response_len" in r for r in rows)
    assert all(r["distill/loss"] >= 0 for r in rows if "distill/loss" in r)
    load_causal_lm(str(tmp_path), load_tokenizer(str(tmp_path)))


def test_qlora_flag_reaches_the_student_not_the_teacher(tmp_path, tiny_sft, monkeypatch) -> None:
    """With --lora-dim 8 --load-in-4bit the student is loaded with load_in_4bit=True and the
    teacher with the default False (the loader is intercepted: no bitsandbytes needed)."""
    import simple_rlhf.models.loading as loading

    calls = []

    class Stop(Exception):
        pass

    def spy(name, tokenizer=None, **kw):
        calls.append(kw.get("load_in_4bit", False))
        if len(calls) == 2:
            raise Stop
        return load_causal_lm(name, tokenizer)

    monkeypatch.setattr(loading, "load_causal_lm", spy)
    with pytest.raises(Stop):
        run(_cfg(tmp_path, tiny_sft, lora_dim=8, load_in_4bit=True))
    assert calls == [False, True]
