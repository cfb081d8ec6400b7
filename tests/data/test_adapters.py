"""Every named-dataset adapter on a fixture in its published schema, and the registry rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from simple_rlhf.data import adapters as adapters_mod
from simple_rlhf.data.adapters import (
    ADAPTERS,
    DatasetAdapter,
    get_adapter,
    register_adapter,
    resolve_source,
)
from simple_rlhf.data.errors import DataError, RecordError
from simple_rlhf.data.readers import read_raw
from simple_rlhf.data.records import PairRecord, SFTRecord, to_pair, to_sft
from simple_rlhf.data.sources import DataSpec, load_records

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_dir(name: str) -> Path:
    return FIXTURES / name.replace("/", "__")


def convert(name: str, split: str = "train") -> list:
    """Rows of the fixture -> records (None for rows the adapter skips)."""
    adapter = get_adapter(name)
    raw = read_raw(str(fixture_dir(name)), split, name=adapter.config)
    out = []
    for row in raw.records:
        std = adapter.convert(row)
        out.append(None if std is None else (to_pair if adapter.has_pairs else to_sft)(std))
    return out


def test_every_adapter_has_a_fixture():
    for name in ADAPTERS:
        assert fixture_dir(name).is_dir(), name


def test_rm_static_full_hh_and_zh_keep_prompt_chosen_rejected():
    assert convert("Dahoas/rm-static")[0] == PairRecord(
        "\n\nHuman: What color is the sky?\n\nAssistant:", " It is blue.", " Green, obviously."
    )
    assert convert("Dahoas/rm-static", "test") == [
        PairRecord("\n\nHuman: Is ice cold?\n\nAssistant:", " Yes, ice is cold.", " No.")
    ]
    full = convert("Dahoas/full-hh-rlhf")[0]
    assert full.prompt.endswith("\n\nHuman: Tell me a joke.\n\nAssistant:")
    assert (full.chosen, full.rejected) == (" Why did the chicken cross the road?", " No.")
    assert convert("zwh9029/rm-static-m2m100-zh-jianti")[1] == PairRecord(
        "\n\nHuman: 猫有几条腿？\n\nAssistant:", " 四条腿。", " 七条。"
    )


def test_synthetic_instruct_wraps_the_plain_prompt():
    assert convert("Dahoas/synthetic-instruct-gptj-pairwise")[3] == PairRecord(
        " Human: Write number 3 in words. Assistant:",
        " The number 3 is written as word 3.",
        " I don't know.",
    )


def test_yitingxie_appends_assistant_and_keeps_text_after_it():
    first, second = convert("yitingxie/rlhf-reward-datasets")
    assert first == PairRecord(
        "\n\nHuman: What is the capital of France?\n\nAssistant:",
        " The capital of France is Paris.",
        " London.",
    )
    assert second == PairRecord(
        "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye Assistant:", " Goodbye!", " What?"
    )


def test_anthropic_hh_splits_transcripts_and_skips_empty_final_turns():
    rows = convert("Anthropic/hh-rlhf")
    assert rows[0] == PairRecord(
        "\n\nHuman: What do cats eat?\n\nAssistant:", " Mostly meat.", " Rocks."
    )
    assert (
        rows[1].prompt == "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: How are you?\n\nAssistant:"
    )
    assert (rows[1].chosen, rows[1].rejected) == (" Fine, thanks.", " Go away.")
    assert rows[2] is None


def test_webgpt_prefers_the_higher_score_drops_ties_and_citations():
    rows = convert("openai/webgpt_comparisons")
    assert rows[0] == PairRecord(
        " Human: Why is the sky blue? Assistant:",
        " Because of Rayleigh scattering.",
        " Sunlight scatters off air molecules.",
    )
    assert rows[1] is None  # score 0.0 vs 0.0
    assert rows[2] == PairRecord(
        " Human: What is rain? Assistant:", " Water falling from clouds.", " Snow."
    )


def test_shp_label_one_prefers_a():
    rows = convert("stanfordnlp/SHP")
    assert rows[0] == PairRecord(
        " Human: Why is grass green? Assistant:", " Chlorophyll.", " Paint."
    )
    assert rows[1] == PairRecord(
        " Human: Is the moon cheese? Assistant:", " No, it is rock.", " Yes."
    )
    assert ADAPTERS["stanfordnlp/SHP"].test_split == "validation"


def test_chinese_sft_only_datasets():
    zhihu = convert("wangrui6/Zhihu-KOL")
    assert zhihu[0] == SFTRecord(" Human: 如何学习编程？ Assistant:", " 多写代码，多读代码。")
    assert zhihu[2] is None  # RESPONSE is null
    hc3 = convert("Hello-SimpleAI/HC3-Chinese")  # config "all" -> all.jsonl only
    assert len(hc3) == 3
    assert hc3[0] == SFTRecord(" Human: 什么是光合作用？ Assistant:", " 植物利用光能制造有机物。")
    assert hc3[2] is None  # no human answer
    assert not ADAPTERS["wangrui6/Zhihu-KOL"].has_pairs


@pytest.mark.parametrize(
    "name, row, field",
    [
        ("Dahoas/rm-static", {"prompt": "p", "chosen": "c"}, "rejected"),
        ("Dahoas/rm-static", {"prompt": "p", "chosen": 3, "rejected": "r"}, "chosen"),
        ("stanfordnlp/SHP", {"history": "h", "human_ref_A": "a", "human_ref_B": "b"}, "labels"),
        ("openai/webgpt_comparisons", {"question": "q"}, "question"),
        ("openai/webgpt_comparisons", {"question": {"full_text": "q"}, "score_0": "1"}, "score_0"),
        ("Hello-SimpleAI/HC3-Chinese", {"question": "q", "human_answers": "a"}, "human_answers"),
    ],
)
def test_bad_published_rows_name_the_published_field(name, row, field):
    with pytest.raises(RecordError) as info:
        get_adapter(name).convert(row)
    assert info.value.field == field


@pytest.mark.parametrize(
    "name, kind, n_train, n_eval",
    [
        ("Dahoas/rm-static", "pair", 3, 1),
        ("Dahoas/full-hh-rlhf", "pair", 2, 1),
        ("Dahoas/synthetic-instruct-gptj-pairwise", "pair", 9, 1),  # 10 rows, 9:1 held out
        ("yitingxie/rlhf-reward-datasets", "pair", 2, 1),
        ("Anthropic/hh-rlhf", "pair", 2, 1),  # 3 train rows, one skipped
        ("stanfordnlp/SHP", "pair", 2, 1),  # eval = validation
        ("zwh9029/rm-static-m2m100-zh-jianti", "pair", 2, 1),
    ],
)
def test_fixture_folders_load_end_to_end(name, kind, n_train, n_eval):
    spec = DataSpec((str(fixture_dir(name)),))
    assert len(load_records(spec, kind, None, "train")[0]) == n_train
    assert len(load_records(spec, kind, None, "eval")[0]) == n_eval


@pytest.mark.parametrize(
    "name, kind",
    [
        ("openai/webgpt_comparisons", "pair"),
        ("wangrui6/Zhihu-KOL", "sft"),
        ("Hello-SimpleAI/HC3-Chinese", "sft"),
    ],
)
def test_train_only_datasets_hold_out_one_row_in_ten(name, kind):
    """3 rows, fraction 0.1: floor(0.3 + .5) = 0 raised to 1 eval row; one of the 3 rows is
    skipped by the adapter, so train + eval = 2 records whichever row was held out."""
    spec = DataSpec((str(fixture_dir(name)),))
    train, _ = load_records(spec, kind, None, "train")
    evals, _ = load_records(spec, kind, None, "eval")
    assert len(train) + len(evals) == 2
    assert all(r not in train for r in evals)


def test_sft_only_dataset_asked_for_pairs_is_one_clear_error():
    spec = DataSpec((str(fixture_dir("wangrui6/Zhihu-KOL")),))
    for kind, step in (("pair", None), ("unpaired", 1)):
        with pytest.raises(DataError, match=r"Zhihu-KOL: this dataset has one response per prompt"):
            load_records(spec, kind, step, "train")


# ----------------------------------------------------------------------------- registry
def test_get_adapter_unknown_lists_known_names():
    with pytest.raises(DataError) as info:
        get_adapter("nobody/nothing")
    assert "unknown dataset adapter 'nobody/nothing'" in str(info.value)
    assert "Dahoas/rm-static" in str(info.value) and "stanfordnlp/SHP" in str(info.value)


def test_register_adapter(monkeypatch):
    monkeypatch.setattr(adapters_mod, "ADAPTERS", dict(ADAPTERS))
    mine = DatasetAdapter(
        "me/prefs",
        lambda r: {"prompt": r["q"], "chosen": r["g"], "rejected": r["b"]},
        True,
        "en",
        None,
    )
    register_adapter(mine)
    assert get_adapter("me/prefs") is mine
    with pytest.raises(ValueError, match="already registered"):
        register_adapter(mine)
    register_adapter(mine, replace=True)
    assert resolve_source("me/prefs").adapter is mine
    assert "me/prefs" not in ADAPTERS  # the real registry is untouched


def test_resolve_source_rules(tmp_path):
    rm = ADAPTERS["Dahoas/rm-static"]
    hub = resolve_source("Dahoas/rm-static")
    assert (hub.location, hub.adapter) == ("Dahoas/rm-static", rm)
    assert resolve_source("someone/other").adapter is None
    at = resolve_source(f"Dahoas/rm-static@{tmp_path}")
    assert (at.location, at.adapter, at.label) == (
        str(tmp_path),
        rm,
        f"Dahoas/rm-static@{tmp_path}",
    )
    with pytest.raises(DataError, match="unknown dataset adapter 'bad/name'.*Dahoas/rm-static"):
        resolve_source(f"bad/name@{tmp_path}")
    # folder names: OWNER__NAME, OWNER--NAME, or the last two components OWNER/NAME
    for folder in ("Dahoas__rm-static", "dahoas--RM-static", "Dahoas/rm-static"):
        (tmp_path / folder).mkdir(parents=True)
        assert resolve_source(str(tmp_path / folder)).adapter is rm, folder
    (tmp_path / "rm-static-copy").mkdir()
    assert resolve_source(str(tmp_path / "rm-static-copy")).adapter is None
    path = tmp_path / "Dahoas__rm-static" / "train.jsonl"
    path.write_text("{}\n", encoding="utf-8")
    assert resolve_source(str(path)).adapter is None  # a file: standard format
