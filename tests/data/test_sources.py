"""load_records: per-step split, eval hold-out, blending, kinds, content hash and errors."""

from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path

import pytest

from simple_rlhf.data.errors import DataError
from simple_rlhf.data.records import PairRecord, PromptRecord, SFTRecord, UnpairedRecord
from simple_rlhf.data.sources import DataSpec, load_records

FIXTURES = Path(__file__).parent / "fixtures"


def write_jsonl(path: Path, rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def pairs(n: int, tag: str = "q") -> list[dict]:
    return [
        {"prompt": f"{tag}{i}", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(n)
    ]


def prompts_of(records) -> list[str]:
    return [r.prompt for r in records]


@pytest.fixture
def fake_tiny(monkeypatch):
    """A stand-in for simple_rlhf.data.tiny_task.raw_records(split, kind)."""
    calls = []

    def raw_records(split: str = "train", kind: str = "pair"):
        calls.append((split, kind))
        n = 20 if split == "train" else 4
        if kind == "unpaired":
            return [
                {"prompt": [{"role": "user", "content": f"{split}{i}"}],
                 "completion": [{"role": "assistant", "content": "c"}], "label": i % 2 == 0}
                for i in range(n)
            ]  # fmt: skip
        return [
            {"prompt": [{"role": "user", "content": f"{split}{i}"}],
             "chosen": [{"role": "assistant", "content": "good"}],
             "rejected": [{"role": "assistant", "content": "bad"}]}
            for i in range(n)
        ]  # fmt: skip

    module = types.ModuleType("simple_rlhf.data.tiny_task")
    module.raw_records = raw_records  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "simple_rlhf.data.tiny_task", module)
    return calls


# ----------------------------------------------------------------------------- step split
def test_steps_get_disjoint_shares_of_train_after_the_eval_holdout(tmp_path):
    """50 pairs, eval_fraction 0.05 -> floor(2.5 + .5) = 3 eval, 47 train; weights 2,4,4 cut the
    47 at floor(9.4 + .5) = 9 and floor(28.2 + .5) = 28: shares of 9, 19, 19."""
    spec = DataSpec((write_jsonl(tmp_path / "p.jsonl", pairs(50)),))
    steps = [prompts_of(load_records(spec, "prompt", s, "train")[0]) for s in (1, 2, 3)]
    evals = prompts_of(load_records(spec, "pair", None, "eval")[0])
    assert [len(s) for s in steps] == [9, 19, 19] and len(evals) == 3
    every = [p for s in steps for p in s] + evals
    assert sorted(every) == sorted(f"q{i}" for i in range(50))  # disjoint and covering
    whole = prompts_of(load_records(spec, "pair", None, "train")[0])
    assert sorted(whole) == sorted(p for s in steps for p in s)


def test_auto_split_gives_your_own_file_to_the_command_and_says_so(tmp_path, fake_tiny):
    """Issue 16, defect 3: with the default split ('auto', a command run on its own) a local pair
    file gives every training pair to the command; 'tiny' and named datasets keep
    DeepSpeed-Chat's 2,4,4; the usage line always says how many records of how many."""
    path = write_jsonl(tmp_path / "p.jsonl", pairs(50))
    usage: list[str] = []
    got, _ = load_records(DataSpec((path,), split=None), "pair", 2, "train", usage=usage)
    assert len(got) == 47 and usage == [f"{path}: 47 of 47 train records as pair"]
    assert len(load_records(DataSpec((path,), split="all"), "pair", 2, "train")[0]) == 47
    usage = []
    got, _ = load_records(DataSpec((path,), split=(2, 4, 4)), "pair", 2, "train", usage=usage)
    assert len(got) == 19
    assert usage == [
        f"{path}: 19 of 47 train records as pair (step 2's share of --data-split 2,4,4; "
        "--data-split all uses every record)"
    ]
    usage = []
    tiny, _ = load_records(DataSpec(("tiny",), split=None), "pair", 2, "train", usage=usage)
    assert "share of --data-split 2,4,4" in usage[0]


def test_same_seed_same_records_different_seed_different(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", pairs(40))
    a, ha = load_records(DataSpec((path,), seed=1), "pair", 2, "train")
    b, hb = load_records(DataSpec((path,), seed=1), "pair", 2, "train")
    c, hc = load_records(DataSpec((path,), seed=2), "pair", 2, "train")
    assert a == b and ha == hb
    assert sorted(prompts_of(a)) != sorted(prompts_of(c)) and ha != hc


def test_published_test_split_is_eval_and_not_split_by_step(tmp_path):
    write_jsonl(tmp_path / "d" / "train.jsonl", pairs(20))
    write_jsonl(tmp_path / "d" / "test.jsonl", pairs(5, tag="t"))
    spec = DataSpec((str(tmp_path / "d"),))
    # no hold-out: 20 train rows cut at floor(4.5) = 4 and floor(12.5) = 12 -> 4, 8, 8
    sizes = [len(load_records(spec, "pair", s, "train")[0]) for s in (1, 2, 3)]
    assert sizes == [4, 8, 8]
    for step in (None, 1, 2, 3):
        got = load_records(spec, "pair", step, "eval")[0]
        assert sorted(prompts_of(got)) == [f"t{i}" for i in range(5)]


def test_sft_only_source_gives_everything_to_step_1_and_nothing_after(tmp_path):
    sft = [{"messages": [{"role": "user", "content": f"s{i}"},
                         {"role": "assistant", "content": "r"}]} for i in range(10)]  # fmt: skip
    sft_path = write_jsonl(tmp_path / "sft.jsonl", sft)
    pair_path = write_jsonl(tmp_path / "pairs.jsonl", pairs(10))
    alone = DataSpec((sft_path,))
    # 10 rows, 1 held out (floor(0.5 + .5) = 1): all 9 others go to step 1, not cut by 2,4,4
    step1 = load_records(alone, "sft", 1, "train")[0]
    assert len(step1) == 9 and all(isinstance(r, SFTRecord) for r in step1)
    for step, kind in ((2, "pair"), (3, "prompt")):
        with pytest.raises(
            DataError, match=f"no training records of kind '{kind}' for step {step}"
        ):
            load_records(alone, kind, step, "train")
    assert len(load_records(alone, "prompt", None, "train")[0]) == 9
    assert load_records(alone, "prompt", 3, "eval")[0] == []
    # blended with pairs: step 3 prompts come only from the pair source
    both = DataSpec((sft_path, pair_path))
    got = prompts_of(load_records(both, "prompt", 3, "train")[0])
    assert got and all(isinstance(p, str) and p.startswith("q") for p in got)
    assert len(load_records(both, "sft", 1, "train")[0]) == 9 + 2  # pairs: 9 train, share 1 = 2


def test_sft_only_adapter_gives_nothing_to_steps_2_and_3():
    spec = DataSpec((str(FIXTURES / "wangrui6__Zhihu-KOL"), str(FIXTURES / "Dahoas__rm-static")))
    step2 = load_records(spec, "pair", 2, "train")[0]
    assert step2 and all(isinstance(r, PairRecord) and "Human" in r.prompt for r in step2)
    step3 = load_records(spec, "prompt", 3, "train")[0]
    assert all("\n\nHuman:" in r.prompt for r in step3)  # none of Zhihu's " Human: " prompts


# ----------------------------------------------------------------------------- blending, kinds
def test_blending_two_paths_is_a_deterministic_shuffle(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", pairs(30, tag="a"))
    b = write_jsonl(tmp_path / "b.jsonl", pairs(30, tag="b"))
    spec = DataSpec((a, b), eval_fraction=0.0)
    got = prompts_of(load_records(spec, "pair", None, "train")[0])
    assert sorted(got) == sorted([f"a{i}" for i in range(30)] + [f"b{i}" for i in range(30)])
    assert got != sorted(got, key=lambda p: p[0])  # interleaved, not a then b
    assert got == prompts_of(load_records(spec, "pair", None, "train")[0])


def test_unpaired_from_pairs_doubles_and_max_eval_caps(tmp_path):
    spec = DataSpec((write_jsonl(tmp_path / "p.jsonl", pairs(20)),), eval_fraction=0.5)
    unpaired = load_records(spec, "unpaired", None, "train")[0]
    assert len(unpaired) == 20 and sum(r.label for r in unpaired) == 10  # 10 pairs -> 2 each
    capped = DataSpec(spec.paths, eval_fraction=0.5, max_eval_records=3)
    assert len(load_records(capped, "pair", None, "eval")[0]) == 3


def test_tiny_task_uses_its_own_eval_split_and_unpaired_records(fake_tiny):
    spec = DataSpec(("tiny",))
    train = load_records(spec, "pair", 1, "train")[0]
    assert len(train) == 4  # 20 rows: share 1 of 2,4,4 = floor(4.5) = 4
    evals = load_records(spec, "prompt", None, "eval")[0]
    assert len(evals) == 4 and all(isinstance(r, PromptRecord) for r in evals)
    kto = load_records(spec, "unpaired", 2, "train")[0]  # labelled completions: all to step 2
    assert len(kto) == 20 and all(isinstance(r, UnpairedRecord) for r in kto)
    assert ("train", "unpaired") in fake_tiny and ("eval", "pair") in fake_tiny


# ----------------------------------------------------------------------------- hash
def test_content_hash_tracks_bytes_and_settings(tmp_path):
    path = tmp_path / "p.jsonl"
    write_jsonl(path, pairs(10))
    spec = DataSpec((str(path),))
    _, h1 = load_records(spec, "pair", 2, "train")
    assert load_records(spec, "pair", 2, "train")[1] == h1
    assert load_records(spec, "pair", 3, "train")[1] != h1
    assert load_records(spec, "sft", 2, "train")[1] != h1
    assert load_records(DataSpec((str(path),), split=(1, 1, 1)), "pair", 2, "train")[1] != h1
    rows = pairs(10)
    rows[9]["rejected"] = " worse 9"
    write_jsonl(path, rows)
    assert load_records(spec, "pair", 2, "train")[1] != h1


# ----------------------------------------------------------------------------- errors
def test_bad_record_error_names_the_shard_and_its_record(tmp_path):
    write_jsonl(tmp_path / "d" / "train-00000-of-00002.jsonl", pairs(3))
    bad = pairs(3)
    bad[1]["chosen"] = 7
    shard = write_jsonl(tmp_path / "d" / "train-00001-of-00002.jsonl", bad)
    spec = DataSpec((str(tmp_path / "d"),), eval_fraction=0.0)
    with pytest.raises(DataError) as info:
        load_records(spec, "pair", None, "train")
    assert str(info.value) == (
        f"{shard}, record 1, field 'chosen': expected a string or a list of messages, got int"
    )


def test_kind_mismatch_is_one_error_at_the_first_record(tmp_path):
    sft = [{"prompt": f"p{i}", "response": "r"} for i in range(5)]
    path = write_jsonl(tmp_path / "sft.jsonl", sft)
    with pytest.raises(DataError, match=r"sft\.jsonl, record 0, field 'chosen': missing"):
        load_records(DataSpec((path,), eval_fraction=0.0), "pair", None, "train")


def test_adapter_errors_and_skips(tmp_path, caplog):
    rows = [{"prompt": "\n\nHuman: q\n\nAssistant:", "chosen": " c", "rejected": " "}]
    folder = tmp_path / "Dahoas" / "rm-static"
    write_jsonl(folder / "train.jsonl", rows)
    with pytest.raises(
        DataError, match=r"record 0, field 'rejected': empty string \(after the Dahoas"
    ):
        load_records(DataSpec((str(folder),)), "pair", None, "train")
    with caplog.at_level(logging.INFO, logger="simple_rlhf.data.sources"):
        load_records(DataSpec((str(FIXTURES / "Anthropic__hh-rlhf"),)), "pair", None, "train")
    assert "skipped 1 of 3 rows" in caplog.text


def test_offline_hub_name_is_a_data_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"could not load dataset 'Dahoas/rm-static'.*local copy"):
        load_records(DataSpec(("Dahoas/rm-static",)), "pair", 2, "train")


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        load_records(DataSpec((str(tmp_path / "nope.jsonl"),)), "sft", 1, "train")
    spec = DataSpec(str(tmp_path / "x.jsonl"))  # type: ignore[arg-type]
    assert spec.paths == (str(tmp_path / "x.jsonl"),) and spec.split == (2.0, 4.0, 4.0)
    assert DataSpec(("a",), split="10,0,0").split == (10.0, 0.0, 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step must be in 1..3"):
        load_records(spec, "sft", 4, "train")
    with pytest.raises(ValueError, match="kind must be one of"):
        load_records(spec, "ppo", 1, "train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight"):
        DataSpec(("a",), split=(0, 0))
    with pytest.raises(ValueError, match="eval_fraction"):
        DataSpec(("a",), eval_fraction=1.0)
    with pytest.raises(ValueError, match="paths"):
        DataSpec(())


# ---- every record is checked, whatever the split; an empty step says which record is at fault ----


@pytest.mark.parametrize("step", [1, 2, 3])
def test_a_bad_record_outside_the_steps_share_is_reported(tmp_path, step):
    """Record 10 of 40 pairs has ``"prompt": 17``: whichever step's share of the 2,4,4 split it
    falls in, and for the eval split too, loading any step names file, record and field."""
    rows = pairs(40)
    rows[10]["prompt"] = 17
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    spec = DataSpec(paths=(path,), eval_fraction=0.1)
    kind = {1: "sft", 2: "pair", 3: "prompt"}[step]
    for split in ("train", "eval"):
        with pytest.raises(DataError, match=r"pairs\.jsonl, record 10, field 'prompt'"):
            load_records(spec, kind, step, split)


@pytest.mark.parametrize(
    ("rows", "kind", "step", "where"),
    [
        # a CSV-like table missing the 'rejected' column, asked for pairs by the reward step
        ([{"prompt": "p", "chosen": "c"}] * 5, "pair", 2, "record 0, field 'rejected'"),
        # messages not a list (an SFT source, asked for pairs): the record itself is refused
        ([{"messages": "hello"}] * 5, "pair", 2, "record 0, field 'messages'"),
        # SFT records asked for unpaired (KTO) records
        ([{"prompt": "p", "completion": "c"}] * 5, "unpaired", 2, "record 0, field 'label'"),
    ],
)
def test_no_records_for_the_step_names_the_record_and_field(tmp_path, rows, kind, step, where):
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(DataError, match=rf"data\.jsonl, {where}"):
        load_records(DataSpec(paths=(path,), eval_fraction=0.0), kind, step)


def test_a_conversation_without_an_assistant_turn_is_named(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    rows = rows * 6 + [{"messages": [{"role": "user", "content": "only a question"}]}]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(DataError, match=r"chat\.jsonl, record 6, field 'messages'"):
        load_records(DataSpec(paths=(path,), eval_fraction=0.0), "sft", 1)
