"""Encoded-data cache: keyed on file content and settings, never stale."""

from __future__ import annotations

import json

import pytest

from simple_rlhf.config import DataArgs
from simple_rlhf.data.pipeline import load_encoded
from simple_rlhf.models.loading import load_tokenizer


@pytest.fixture(scope="module")
def tok(tiny_base):
    return load_tokenizer(str(tiny_base))


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def args(tmp_path, path, **kw):
    return DataArgs(
        data_path=[str(path)], data_cache_dir=str(tmp_path / "cache"), eval_fraction=0.0, **kw
    )


def test_edited_file_is_never_served_stale(tmp_path, tok):
    data = tmp_path / "d.jsonl"
    write(data, [{"prompt": "Q1", "response": " sky is blue."}, {"prompt": "Q2", "response": " a"}])
    first, _ = load_encoded(tok, args(tmp_path, data), "sft", 1, "train")
    again, _ = load_encoded(tok, args(tmp_path, data), "sft", 1, "train")
    assert first == again
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1  # second call was a cache hit
    write(data, [{"prompt": "Q1", "response": " sky is red."}, {"prompt": "Q2", "response": " a"}])
    edited, _ = load_encoded(tok, args(tmp_path, data), "sft", 1, "train")
    texts = {tok.decode(e["input_ids"]) for e in edited}
    assert any("red" in t for t in texts) and not any("blue" in t for t in texts)


def test_settings_that_change_tokens_change_the_key(tmp_path, tok):
    data = tmp_path / "d.jsonl"
    write(data, [{"prompt": "Q1", "response": " sky is blue."}])
    plain, _ = load_encoded(tok, args(tmp_path, data), "sft", 1, "train")
    whole, _ = load_encoded(tok, args(tmp_path, data, train_on_prompt=True), "sft", 1, "train")
    assert plain[0]["labels"] != whole[0]["labels"]
    short, stats = load_encoded(
        tok, args(tmp_path, data, max_seq_len=4, max_prompt_len=2, truncation="truncate"), "sft",
        1, "train",
    )  # fmt: skip
    assert short[0]["input_ids"] != plain[0]["input_ids"] and stats.truncated == 1


def test_every_record_too_long_is_a_clear_error(tmp_path, tok):
    from simple_rlhf.data.errors import DataError

    path = tmp_path / "long.jsonl"
    write(path, [{"prompt": "p " * 400, "response": "r"}] * 3)
    with pytest.raises(DataError, match=r"all 3 training records .* dropped .*--max-seq-len 64"):
        load_encoded(
            tok, args(tmp_path, path, max_seq_len=64, max_prompt_len=32), "sft", 1, "train"
        )
