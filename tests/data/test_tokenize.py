"""Token boundaries and label masks, checked token by token on the tiny tokenizer."""

from __future__ import annotations

import pytest

from simple_rlhf.data.records import PairRecord, SFTRecord
from simple_rlhf.data.tokenize import (
    IGNORE_INDEX,
    Limits,
    collate_pairs,
    collate_sft,
    encode_pairs,
    encode_prompt,
    encode_response,
    encode_sft,
    render_response,
)
from simple_rlhf.models.loading import load_tokenizer

USER = [{"role": "user", "content": "What color is each of these: sky?"}]
ANSWER = [{"role": "assistant", "content": "sky is blue."}]


@pytest.fixture(scope="module")
def tok(tiny_base):
    return load_tokenizer(str(tiny_base))


def toks(tok, ids):
    return tok.convert_ids_to_tokens(ids)


def test_chat_template_boundary(tok):
    """Prompt = template + generation prompt '<|assistant|>\\n'; response = answer + EOS only
    (the template's trailing newline after EOS is not trained on)."""
    p = encode_prompt(tok, USER)
    r = encode_response(tok, USER, ANSWER)
    assert toks(tok, p)[0] == "<|user|>"
    assert toks(tok, p)[-2:] == ["<|assistant|>", "Ċ"]
    assert toks(tok, r) == ["sky", "Ġis", "Ġblue", ".", "</s>"]
    # concatenation equals the full rendering minus the trailing newline
    full = tok.apply_chat_template(USER + ANSWER, tokenize=False)
    assert tok.decode(p + r) == full.rstrip("\n")


def test_raw_boundary_and_eos(tok):
    """Raw strings are used as they are; EOS is appended once, even if already present."""
    p = encode_prompt(tok, "Q: sky?")
    r1 = encode_response(tok, "Q: sky?", " sky is blue.")
    r2 = encode_response(tok, "Q: sky?", " sky is blue.</s>")
    assert tok.decode(p) == "Q: sky?"
    assert r1 == r2
    assert r1[-1] == tok.eos_token_id and r1.count(tok.eos_token_id) == 1


def test_pad_distinct_from_eos(tok):
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id


def test_sft_labels_mask_prompt(tok):
    """Labels are -100 on every prompt token and equal the ids on response tokens (EOS incl.)."""
    limits = Limits(64, 48)
    (ex,), stats = encode_sft(tok, [SFTRecord(USER, ANSWER)], limits)
    n_prompt = len(encode_prompt(tok, USER))
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert ex["labels"][-1] == tok.eos_token_id
    (whole,), _ = encode_sft(tok, [SFTRecord(USER, ANSWER)], limits, train_on_prompt=True)
    assert whole["labels"] == whole["input_ids"]
    assert stats.kept == 1 and stats.dropped == 0


def test_collate_keeps_eos_in_loss_when_padded(tok):
    """Right padding uses the pad id, so the EOS label survives padding (pad != eos)."""
    limits = Limits(64, 48)
    short = SFTRecord(USER, ANSWER)
    long = SFTRecord(USER, [{"role": "assistant", "content": "sky is blue. sky is blue."}])
    exs, _ = encode_sft(tok, [short, long], limits)
    batch = collate_sft(exs, tok.pad_token_id)
    row = batch["labels"][0]
    n = len(exs[0]["input_ids"])
    assert row[n - 1] == tok.eos_token_id
    assert (row[n:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][0, n:] == tok.pad_token_id).all()
    assert batch["attention_mask"][0].sum() == n


def test_truncation_policy_drop_and_truncate(tok):
    """A prompt over max_prompt_len is dropped (counted) or cut from the left."""
    long_prompt = [{"role": "user", "content": "What color is each of these: " + "sky, " * 40}]
    rec = SFTRecord(long_prompt, ANSWER)
    _, stats = encode_sft(tok, [rec], Limits(64, 32, "drop"))
    assert (stats.kept, stats.dropped) == (0, 1)
    (ex,), stats = encode_sft(tok, [rec], Limits(64, 32, "truncate"))
    assert stats.truncated == 1
    n_prompt = sum(1 for x in ex["labels"] if x == IGNORE_INDEX)
    assert n_prompt == 32
    assert ex["input_ids"][-1] == tok.eos_token_id


def test_pairs_share_prompt_and_collate_chosen_first(tok):
    rec = PairRecord(USER, ANSWER, [{"role": "assistant", "content": "sky is red."}])
    (ex,), _ = encode_pairs(tok, [rec], Limits(64, 48))
    batch = collate_pairs([ex], tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 2
    n_prompt = len(ex["prompt_ids"])
    assert (batch["labels"][:, :n_prompt] == IGNORE_INDEX).all()
    assert tok.decode(ex["chosen_ids"], skip_special_tokens=True) == "sky is blue."
    assert tok.decode(ex["rejected_ids"], skip_special_tokens=True) == "sky is red."


def test_fallback_template_for_base_tokenizer(tok):
    """A tokenizer with no chat template gets the hh-style transcript template."""
    import copy

    bare = copy.deepcopy(tok)
    bare.chat_template = None
    assert render_response(bare, USER, ANSWER) == " sky is blue.</s>"
    assert bare.decode(encode_prompt(bare, USER)).endswith("\n\nAssistant:")


def test_bos_prepended_when_tokenizer_adds_one(tok):
    """A tokenizer that adds BOS by default gets BOS first in every prompt, exactly once."""
    import copy

    from tokenizers import processors

    bos_tok = copy.deepcopy(tok)
    bos_tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos_tok.bos_token_id)]
    )
    assert bos_tok("a")["input_ids"][0] == bos_tok.bos_token_id
    ids = encode_prompt(bos_tok, "Q: sky?")
    assert ids[0] == bos_tok.bos_token_id and ids.count(bos_tok.bos_token_id) == 1
    assert encode_prompt(bos_tok, "<s>Q: sky?").count(bos_tok.bos_token_id) == 1


def test_a_huge_prompt_is_cut_before_it_is_tokenized(tiny_base):
    """A 10 MB prompt with max_seq_len 64: dropped (or truncated) without tokenizing it in full.
    Measured in a child process: the peak RSS grows by well under 200 MB (it grew ~2.4 GB when the
    whole text was tokenized first); a truncated example keeps the prompt's end, as for any prompt
    over the limit."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        f"""
        import resource, json
        from simple_rlhf.data.records import PairRecord
        from simple_rlhf.data.tokenize import Limits, encode_pairs
        from simple_rlhf.models.loading import load_tokenizer
        tok = load_tokenizer({str(tiny_base)!r})
        huge = PairRecord(prompt="apple " * 1_700_000 + "name the colour", chosen="red", rejected="x")
        small = PairRecord(prompt="name the colour of apple", chosen="red", rejected="x")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = {{}}
        for policy in ("drop", "truncate"):
            ex, stats = encode_pairs(tok, [huge, small], Limits(64, 48, policy))
            out[policy] = [stats.kept, stats.dropped, stats.truncated, len(ex[0]["prompt_ids"])]
            out[policy + "_tail"] = tok.decode(ex[0]["prompt_ids"][-4:])
        out["grew_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(json.dumps(out))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["drop"][:3] == [1, 1, 0]  # the huge one dropped, the small one kept
    assert out["truncate"][:3] == [2, 0, 1] and out["truncate"][3] == 48
    assert "colour" in out["truncate_tail"]
    assert out["grew_mb"] < 200, out


def test_identical_pairs_are_counted_and_dropped(tiny_base):
    from simple_rlhf.data.records import PairRecord
    from simple_rlhf.data.tokenize import Limits, encode_pairs
    from simple_rlhf.models.loading import load_tokenizer

    tok = load_tokenizer(str(tiny_base))
    recs = [PairRecord("q1", "red", "red"), PairRecord("q2", "red", "blue")]
    out, stats = encode_pairs(tok, recs, Limits(64, 48))
    assert len(out) == 1 and (stats.kept, stats.identical) == (1, 1)
    assert "1 identical pairs dropped" in stats.describe()
